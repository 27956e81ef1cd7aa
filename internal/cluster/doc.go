// Package cluster is mynet's cluster store: the state that hosts of a
// multi-host network share, kept in etcd (go.etcd.io/etcd/client/v3).
//
// What it holds, in the key layout of internal/model (cluster.go): network
// records (spec, VNI, member hosts), VNI allocations, a round-robin cursor
// and one address claim per endpoint carrying the endpoint's advert {host,
// IP, MAC, VTEP}, host registrations and liveness keys on leases.
//
// Invariants:
//   - Every write that could race another host is a transaction with a
//     compare (first writer wins on CreateRevision == 0, or a
//     compare-and-swap on ModRevision); a lost round re-reads and retries,
//     so two hosts never hold one address and a network has one spec and
//     one VNI.
//   - A claim and its advert are one key, written in one transaction with
//     the cursor: a watcher never sees one without the other.
//   - Claims are not on the host's lease: a host cut off from etcd keeps
//     its addresses; FreeDeadHost, called by a live host after a grace
//     period, frees them, and only while the host's liveness key is gone.
//   - Every call is bounded (Config.RequestTimeout) and names the store's
//     endpoints in its error. Deletes are idempotent, so that the driver
//     can queue them while etcd is unreachable and replay them later.
//
// It imports no prometheus (Metrics are small interfaces) and nothing of
// mynet's above internal/model and ipam (whose Pool picks the next address).
package cluster
