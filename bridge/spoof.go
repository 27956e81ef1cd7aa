package bridge

// Anti-spoofing: what a container may put on its bridge port.
//
// A container has CAP_NET_RAW by default, so it can write any frame to its
// eth0. On a shared bridge that lets it take over a neighbour's MAC (the
// bridge then forwards the neighbour's traffic to it), poison the ARP and
// neighbour caches of the host and of the other containers, send from
// addresses it was not given, become an IPv6 router, or smuggle frames past
// every rule inside a VLAN tag. The filter below, modelled on LXD's per-port
// bridge filter (security.mac_filtering/ipv4_filtering/ipv6_filtering),
// accepts from an endpoint's host veth only what that endpoint owns.
//
// Layout, one nftables table of family bridge per instance (named like the
// iptables chains: "mynet" for the default instance, "mynet_<6 hex>"
// otherwise), made through netlink with github.com/google/nftables, so no
// nft or ebtables binary is needed and it does not matter which backend the
// iptables binary uses:
//
//	table bridge mynet {
//		set ports { type ifname; }                    # host veths under the filter
//		set macs  { type ifname . ether_addr; }       # each veth's MAC
//		set ipv4  { type ifname . ipv4_addr; }        # each veth's addresses
//		set ipv6  { type ifname . ipv6_addr; }
//		chain prerouting {
//			type filter hook prerouting priority -300; policy accept;
//			iifname != @ports accept
//			iifname . ether saddr != @macs drop
//			ether type ip iifname . ip saddr @ipv4 accept
//			...one rule per kind of forgery, see spoofRules...
//		}
//	}
//
// Prerouting sees every frame entering the bridge from a port, whether the
// bridge forwards it to another port or delivers it to the host, and runs
// before the bridge learns the source MAC, so a dropped frame cannot move a
// neighbour's MAC to the attacker's port either. Priority -300 puts it
// before br_netfilter (0) and bridge conntrack (-200).
//
// The rules are the same for every endpoint and never change; an endpoint
// is only set elements keyed by its veth's name. So the ruleset does not
// grow with endpoints (21 rules for any number), a frame costs the same few
// hash lookups whatever the number of endpoints, and adding or removing an
// endpoint adds or deletes a handful of elements in one atomic batch. An
// earlier layout, a verdict map jumping to a chain per endpoint, made the
// kernel re-validate every chain the map could reach on each commit that
// added a jump (nft_table_validate): 6 ms more per container start at 1000
// endpoints on the benchmark VM. Plain set elements need no validation.
//
// Sockets: the Dataplane opens its two netfilter netlink sockets when it is
// created, in the caller's network namespace (the host's in production, the
// test's inside nstest.Run), and keeps them. Closing a netfilter netlink
// socket makes the kernel wait for the deferred cleanup of the last
// ruleset change (nft_rcv_nl_event flushes the destroy work, which waits
// for an RCU grace period): a socket per call cost 10-20 ms per container
// start and stop on the benchmark VM.

import (
	"fmt"

	"github.com/mynet/mynet/internal/model"
)

// spoofFilter is the anti-spoofing filter as the Dataplane uses it: set
// or drop what one veth may send, and read back what the kernel has. The
// Dataplane validates endpoints and picks the veths; the filter owns its
// kernel objects, its sockets and its lock. nftFilter is the only one in
// production; tests use a fake.
type spoofFilter interface {
	// ensure puts ep's veth under the filter with exactly ep's MAC and
	// addresses, in one atomic change; added reports that the veth was not
	// under it before, so that the caller's undo removes only that.
	ensure(ep model.Endpoint) (added bool, err error)
	// remove drops the elements of the veths selected picks; with
	// dropEmptyTable, the filter's table too when no veth is left.
	remove(selected func(veth string) bool, dropEmptyTable bool) error
	// fingerprint digests the filter as the kernel has it (see
	// SpoofFingerprint).
	fingerprint() (model.Digests, error)
	// hasElements reports whether any veth is under the filter.
	hasElements() (bool, error)
	close()
}

// SpoofTable names this instance's anti-spoofing table (family bridge),
// for operators and tests: nft list table bridge NAME.
func (d *Dataplane) SpoofTable() string { return model.SpoofTableName(d.instance) }

// EnsureSpoofCheck puts the endpoint under the filter: frames from
// ep.HostVeth must carry ep.MAC and, in ARP, IPv4 and IPv6, only
// ep.Addresses (see spoofRules for the exact policy). It creates the table,
// its sets and its rules when missing or outdated, and changes nothing
// when the endpoint's elements are already those it would write. One
// atomic batch: on error nothing changed. RemoveSpoofCheck undoes it.
func (d *Dataplane) EnsureSpoofCheck(ep model.Endpoint) error {
	_, err := d.ensureSpoofCheck(ep)
	return err
}

// ensureSpoofCheck is EnsureSpoofCheck; it reports whether it put the veth
// under the filter, which it was not before (its undo is RemoveSpoofCheck).
func (d *Dataplane) ensureSpoofCheck(ep model.Endpoint) (added bool, err error) {
	if err := spoofCheckInputs(ep); err != nil {
		return false, err
	}
	return d.spoof.ensure(ep)
}

// RemoveSpoofCheck deletes the endpoint's elements. Missing ones are not an
// error. The table stays, even empty: creating it registers a netfilter
// hook and deleting it unregisters one, and each waits for an RCU grace
// period (13 ms on the benchmark VM), which every container start and stop
// paid while the network had one container. DeleteNetwork and the orphan
// sweep remove an empty table.
func (d *Dataplane) RemoveSpoofCheck(ep model.Endpoint) error {
	return d.spoof.remove(func(veth string) bool { return veth == ep.HostVeth }, false)
}

// removeSpoofOrphans deletes the elements of every veth whose endpoint is
// not in endpoints (full IDs, as RemoveOrphans takes them; veths are named
// after the 12-hex short form, which is what is compared), and with
// dropEmptyTable the table when no endpoint is left.
func (d *Dataplane) removeSpoofOrphans(endpoints map[string]bool, dropEmptyTable bool) error {
	keep := map[string]bool{}
	for id := range endpoints {
		host, _ := model.VethNames(id)
		keep[host] = true
	}
	return d.spoof.remove(func(veth string) bool { return !keep[veth] }, dropEmptyTable)
}

// removeEmptySpoofTable deletes the table if no endpoint is under it.
func (d *Dataplane) removeEmptySpoofTable() error {
	return d.spoof.remove(func(string) bool { return false }, true)
}

// SpoofFingerprint digests the anti-spoofing table as the kernel has it:
// the base chain's rules by comment under "spoof", and each veth's set
// elements under "veth:NAME", without handles or counters (see Digests).
// A digest changes when anyone adds, removes or flushes a rule or an
// element, so the periodic reconcile re-runs EnsureSpoofCheck where it
// did. It is computed from the cached state while the nftables generation
// says nothing changed since this Dataplane read or wrote the table.
func (d *Dataplane) SpoofFingerprint() (model.Digests, error) { return d.spoof.fingerprint() }

// spoofCheckInputs refuses an endpoint the filter cannot describe.
func spoofCheckInputs(ep model.Endpoint) error {
	if err := model.ValidateIfName(ep.HostVeth); err != nil {
		return fmt.Errorf("anti-spoofing for endpoint %s: %w", model.Short(ep.ID), err)
	}
	if len(ep.ID) < 12 {
		return fmt.Errorf("anti-spoofing: endpoint ID %q is too short", ep.ID)
	}
	if len(ep.MAC) != 6 || ep.MAC[0]&1 != 0 {
		return fmt.Errorf("anti-spoofing for endpoint %s: MAC %q is not a unicast Ethernet address", model.Short(ep.ID), ep.MAC)
	}
	for _, a := range ep.Addresses {
		if a = a.Unmap(); !a.IsValid() || a.IsUnspecified() {
			return fmt.Errorf("anti-spoofing for endpoint %s: address %v is not a usable container address", model.Short(ep.ID), a)
		}
	}
	return nil
}
