// Package peers keeps the remote endpoints of this host's cluster networks
// programmed on their VXLAN devices, and looks after the cluster as a
// whole from this host's side.
//
// Per cluster network an Agent follows the cluster store's endpoint watch
// and turns the adverts of other hosts into permanent FDB entries (MAC ->
// VTEP) and neighbour entries (IP -> MAC). It starts from a local copy of
// those peers (bbolt), so that a restart with etcd down programs what was
// known, and it saves that copy again, coalesced, as the watch changes it.
// A periodic resync compares the device's entries with the wanted ones and
// repairs what was deleted or changed by hand.
//
// Beside that, Run keeps the VXLAN port's VTEP filter in step with the
// known hosts, frees the claims of hosts dead for longer than the grace
// period, tracks whether this host is cut off from the store (degraded)
// and, on its return, re-asserts this host's claims by compare-and-swap:
// a claim another host now holds is reported, never overwritten.
//
// Invariants: entries are deleted only against an authoritative list (the
// local copy or a listing of the store), never because the store is
// unreachable; the agent never writes claims of other hosts except through
// FreeDeadHost, which the store guards with the dead host's liveness key.
package peers
