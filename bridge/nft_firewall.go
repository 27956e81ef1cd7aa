package bridge

// The nftables firewall backend: the same policy as the iptables one
// (iptables_rules.go), in one table of mynet's own per family, written
// through netlink in one batch per operation.
//
//	table ip mynet {                      # ip6 mynet alike; "mynet_<hash>" for other instances
//		set bridges       { type ifname; }                                  # every mynet bridge
//		map ports-addr    { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }
//		map ports-any     { type inet_proto . inet_service : ipv4_addr . inet_service; }
//		map in-jumps      { type ifname : verdict; }   # oifname BR : jump net-<ID>-in
//		map out-jumps     { type ifname : verdict; }   # iifname BR : jump net-<ID>-out
//		map nat-out-jumps, nat-in-jumps, direct-jumps  (likewise)
//		chain forward     { type filter hook forward priority -1; policy accept;
//			ct status dnat meta l4proto . ct original ip daddr . ct original proto-dst @ports-addr accept
//			ct status dnat meta l4proto . ct original proto-dst @ports-any accept
//			oifname vmap @in-jumps
//			iifname vmap @out-jumps }
//		chain prerouting  { type nat hook prerouting priority -101; fib daddr type local jump dnat }
//		chain output      { type nat hook output priority -101; fib daddr type local jump dnat }
//		chain dnat        { dnat to (proto . daddr . dport | proto . dport) map @ports-addr / @ports-any }
//		chain postrouting { type nat hook postrouting priority 99; iifname vmap @nat-out-jumps; oifname vmap @nat-in-jumps }
//		chain direct      { type filter hook prerouting priority -150; fib daddr oifname vmap @direct-jumps }
//		chain net-<ID>-in, net-<ID>-out, ...    # per network, see networkObjects
//	}
//
// Rules grow with networks (a few chains each), never with containers;
// a published port is one map element per host port, with a comment
// naming its network and endpoint, so publishing 1,000 ports is one batch
// of 1,000 elements and the packet path is one hash lookup whatever the
// number. The table is per family (ip, ip6), as Docker's docker-bridges
// tables are, because the firewall interface is per family: each family's
// operation is one batch, and the table is removed with the family's last
// network.
//
// Order against Docker 29's nftables tables (table ip/ip6 docker-bridges,
// moby daemon/libnetwork/drivers/bridge/internal/nftabler): Docker's base
// chains sit at the standard priorities: raw-PREROUTING at raw (-300),
// nat-PREROUTING and nat-OUTPUT at dstnat (-100), filter-FORWARD at
// filter (0), nat-POSTROUTING at srcnat (100), all with policy accept.
// Every table's base chain on a hook sees every packet: an accept ends
// only the evaluation of that table's chain, a drop is final. So:
//
//   - Isolation holds both ways because each side's drops are its own.
//     Into a mynet bridge, mynet's in-chain drops every new connection
//     that is not from the bridge itself (ICC) or a published port,
//     whatever Docker's table accepted. Out of a mynet bridge into
//     Docker's bridges (docker0, br-*), mynet's out-chain drops new
//     connections. Docker's own chains drop most of them too in gateway
//     mode nat (raw-PREROUTING's direct-access drop, then the ingress
//     chain's drop of unpublished ports), but in gateway mode
//     nat-unprotected its ingress chain accepts everything: there only
//     mynet's drop keeps mynet's containers out (TestNFTBesideDocker29
//     fails without it). Replies pass both tables (each accepts
//     established,related). A Docker bridge named with
//     com.docker.network.bridge.name is not known, as under iptables.
//   - The priorities only order, they decide no verdict: forward at -1
//     decides before Docker's filter-FORWARD (a packet mynet drops never
//     reaches Docker's counters); prerouting/output NAT at -101 translate
//     mynet's ports before Docker's nat chains are asked (a connection's
//     first NAT binding wins; the two never publish the same host port);
//     postrouting at 99 masquerades before Docker's, on disjoint subnets;
//     the direct-routing drop at mangle (-150) runs after conntrack (-200),
//     so it can spare replies, and after Docker's raw drops, which concern
//     Docker's containers only.
//
// What no nftables rule of mynet can change: a drop policy or drop rule of
// another table on the forward hook (an iptables-nft FORWARD chain with
// policy DROP, as Docker's iptables backend sets it) drops mynet's traffic
// too; that is why serve --firewall auto follows dockerd's backend.

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// nftFirewall keeps one family's rules in its nftables table. mu
// serialises its read-modify-write operations.
type nftFirewall struct {
	instance string
	v6       bool
	log      *slog.Logger

	mu   sync.Mutex
	conn *nftables.Conn
	raw  *netlink.Conn // for the one dump of all the table's rules
	err  error         // why the socket could not be opened
	memo map[string]nftNetMemo
	// verified lets a reconcile pass skip the read when the ruleset has
	// not changed since the last pass found it right.
	verified nftVerified
	lines    nftLines
	reads    int // reads of the table for ownLines, for tests and benchmarks
}

func newNFTFirewall(instance string, v6 bool, log *slog.Logger) *nftFirewall {
	f := &nftFirewall{instance: instance, v6: v6, log: log}
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(nftBigSendBuffer))
	if err != nil {
		f.err = fmt.Errorf("open nftables netlink socket: %w", err)
		return f
	}
	f.conn = c
	if f.raw, err = netlink.Dial(unix.NETLINK_NETFILTER, nil); err != nil {
		c.CloseLasting()
		f.conn, f.err = nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	return f
}

// nftSendBuffer is the socket's send buffer: a batch goes to the kernel
// in one sendmsg, which fails with EMSGSIZE beyond the buffer, and the
// default (net.core.wmem_default, 208 KiB) holds about 1,000 elements.
// 32 MiB holds a publish of 80,000 ports; memory is used only while a
// batch is in flight.
const nftSendBuffer = 32 << 20

// nftBigSendBuffer sets the send buffer past net.core.wmem_max with
// SO_SNDBUFFORCE (CAP_NET_ADMIN, which mynet has), as nft does for its
// batches; without the capability, as large as wmem_max allows. The
// receive buffer likewise: the kernel acknowledges each message of a
// batch, and a reconcile that writes a few hundred networks' chains gets
// thousands of acknowledgements back at once (ENOBUFS at the default).
func nftBigSendBuffer(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr, rerr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nftSendBuffer)
		rerr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, nftSendBuffer)
	}); err != nil {
		return err
	}
	if serr != nil {
		if err := c.SetWriteBuffer(nftSendBuffer); err != nil {
			return err
		}
	}
	if rerr != nil {
		return c.SetReadBuffer(nftSendBuffer)
	}
	return nil
}

func (f *nftFirewall) close() {
	if f.conn != nil {
		f.conn.CloseLasting()
		f.raw.Close()
	}
}

func (f *nftFirewall) family() string {
	if f.v6 {
		return "nftables ip6"
	}
	return "nftables ip"
}

// objs are the table's objects, afresh for each batch (AddSet fills in
// IDs).
func (f *nftFirewall) objs() nftObjs { return nftObjsFor(f.instance, f.v6) }

func (f *nftFirewall) tableName() string {
	o := f.objs()
	return o.ipName() + " " + o.table.Name
}

// ensureNetwork writes the table's fixed objects and the network's chains
// whole, with the elements that lead into them, in one batch. It pushes
// the network's removal onto undo only when its chains were not there.
func (f *nftFirewall) ensureNetwork(ctx context.Context, n model.Network, undo *netutil.Undo) error {
	o := f.objs()
	chains, elems := o.networkObjects(n)
	if len(chains) == 0 {
		return nil
	}
	if err := stopped(ctx, f.family()+" rules of network "+model.Short(n.ID)); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	st, err := f.read(o, []string{nsDockerBridges})
	if err != nil {
		return fmt.Errorf("read %s for network %s: %w", f.tableName(), model.Short(n.ID), err)
	}
	existed := st.chains[chains[0].name]
	b := newNFTBatch(f.conn, o)
	b.base()
	for _, ch := range chains {
		b.chain(&nftables.Chain{Name: ch.name, Table: o.table}, ch.rules)
	}
	dockerAdd, dockerGone := dockerBridgeDiff(st)
	b.elems(false, dockerGone)
	b.elems(true, append(elems, dockerAdd...))
	if err := b.flush(); err != nil {
		return fmt.Errorf("write %s rules of network %s (bridge %s): %w", f.tableName(), model.Short(n.ID), n.Bridge, err)
	}
	f.log.Debug("nftables network rules written", "table", f.tableName(), "network_id", model.Short(n.ID), "new", !existed)
	if !existed {
		undo.Push("remove "+f.tableName()+" rules of network "+model.Short(n.ID), func() error { return f.removeNetwork(n.ID) })
	}
	return nil
}

// ensurePorts adds the endpoint's port elements that are missing (and
// the table when it is missing), in one batch; an element of the same key
// with other data is replaced. Only the elements it added go onto undo.
func (f *nftFirewall) ensurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping, undo *netutil.Undo) error {
	o := f.objs()
	want := o.portElems(ep, ports)
	if len(want) == 0 {
		return nil
	}
	if err := stopped(ctx, f.family()+" ports of endpoint "+model.Short(ep.ID)); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	st, err := f.read(o, []string{nsPortsAddr, nsPortsAny, nsPublished, nsRouted})
	if err != nil {
		return fmt.Errorf("read %s for the ports of endpoint %s: %w", f.tableName(), model.Short(ep.ID), err)
	}
	b := newNFTBatch(f.conn, o)
	if !st.exists {
		b.base()
	}
	var added, stale []nftElem
	seen := map[string]bool{}
	for _, e := range want {
		if seen[e.set+string(e.key)] {
			continue // a container port that several host ports map to
		}
		seen[e.set+string(e.key)] = true
		have, ok := st.elem(e)
		if ok && slices.Equal(have.Val, e.val) && have.Comment == e.comment {
			continue
		}
		if ok {
			stale = append(stale, e)
		}
		added = append(added, e)
	}
	if len(added) == 0 {
		return nil
	}
	b.elems(false, stale)
	b.elems(true, added)
	if err := b.flush(); err != nil {
		return fmt.Errorf("publish %d ports of endpoint %s of network %s in %s: %w", len(added), model.Short(ep.ID), model.Short(n.ID), f.tableName(), err)
	}
	f.log.Debug("nftables port elements added", "table", f.tableName(), "endpoint_id", model.Short(ep.ID), "elements", len(added))
	if !st.exists {
		// Runs after the elements' removal: the table goes when this call
		// made it and nothing else has come into it since.
		undo.Push("remove "+f.tableName()+" when empty", func() error {
			return f.removeWhere(func(string, string) bool { return false })
		})
	}
	undo.Push("remove "+f.tableName()+" port elements of endpoint "+model.Short(ep.ID), func() error {
		return f.removeElems(added, ep)
	})
	return nil
}

// removePorts deletes the endpoint's elements of the given ports that the
// kernel has and that are still the endpoint's, in one batch.
func (f *nftFirewall) removePorts(ep model.Endpoint, ports []model.PortMapping) error {
	return f.removeElems(f.objs().portElems(ep, ports), ep)
}

func (f *nftFirewall) removeElems(elems []nftElem, ep model.Endpoint) error {
	if len(elems) == 0 {
		return nil
	}
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	st, err := f.read(o, []string{nsPortsAddr, nsPortsAny, nsPublished, nsRouted})
	if err != nil || !st.exists {
		return err
	}
	var gone []nftElem
	goneKeys := map[string]bool{}
	for _, e := range elems {
		if e.set == nsPublished {
			continue
		}
		if have, ok := st.elem(e); ok && have.Comment == e.comment {
			gone = append(gone, e)
			goneKeys[e.set+string(e.key)] = true
		}
	}
	// A container port stays in the published set while any host port
	// still maps to it (8080 and 8081 to port 80, say).
	still := map[string]bool{}
	for _, set := range []string{nsPortsAddr, nsPortsAny} {
		for _, e := range st.elems[set] {
			if !goneKeys[set+string(e.Key)] {
				still[string(e.Val)+string(e.Key[:1])] = true
			}
		}
	}
	for _, e := range elems {
		if e.set != nsPublished || still[nftPublishedTarget(e.key)] {
			continue
		}
		if have, ok := st.elem(e); ok && have.Comment == e.comment && !goneKeys[e.set+string(e.key)] {
			gone = append(gone, e)
			goneKeys[e.set+string(e.key)] = true
		}
	}
	if len(gone) == 0 {
		return nil
	}
	b := newNFTBatch(f.conn, o)
	b.elems(false, gone)
	if err := b.flush(); err != nil {
		return fmt.Errorf("unpublish %d ports of endpoint %s in %s: %w", len(gone), model.Short(ep.ID), f.tableName(), err)
	}
	f.log.Debug("nftables port elements removed", "table", f.tableName(), "endpoint_id", model.Short(ep.ID), "elements", len(gone))
	return nil
}

// removeNetwork deletes the network's chains and every element naming it
// (its ports too), found in the kernel rather than rebuilt from a config
// that may be lost; with the family's last network, the whole table.
func (f *nftFirewall) removeNetwork(id string) error {
	return f.removeWhere(func(nid, _ string) bool { return nid == id })
}

// removeOrphans deletes what names networks and endpoints not in keep.
func (f *nftFirewall) removeOrphans(networks, endpoints map[string]bool) error {
	return f.removeWhere(func(nid, eid string) bool { return !networks[nid] || (eid != "" && !endpoints[eid]) })
}

// removeWhere is one read of the table and one batch.
func (f *nftFirewall) removeWhere(drop func(networkID, endpointID string) bool) error {
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	st, err := f.read(o, nftSetOrder)
	if err != nil || !st.exists {
		return err
	}
	left, gone := map[string]bool{}, []nftElem{}
	for _, set := range nftSetOrder {
		for _, e := range st.elems[set] {
			nid, eid, ok := model.ParseRuleComment(`comment "` + e.Comment + `"`)
			if !ok {
				continue
			}
			if !drop(nid, eid) {
				left[nid] = true
				continue
			}
			gone = append(gone, nftElem{set: set, key: e.Key, text: fmt.Sprintf("%x", e.Key)})
		}
	}
	var chains []string
	for name := range st.chains {
		if nid, ok := model.ParseNFTNetworkChain(name); ok {
			if !drop(nid, "") {
				left[nid] = true
				continue
			}
			chains = append(chains, name)
		}
	}
	n := len(gone)
	b := newNFTBatch(f.conn, o)
	switch {
	case len(left) == 0:
		// Deleting a table deletes everything in it.
		b.delTable()
	case n == 0 && len(chains) == 0:
		return nil
	default:
		// Elements first: a chain a map still jumps to cannot go.
		b.elems(false, gone)
		slices.Sort(chains)
		for _, name := range chains {
			b.delChain(name)
		}
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("remove rules from %s: %w", f.tableName(), err)
	}
	f.log.Debug("nftables rules removed", "table", f.tableName(), "elements", n, "chains", len(chains), "table_removed", len(left) == 0)
	return nil
}
