package bridge

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// ensureBridge makes n.Bridge exist as mynet's bridge for n, with n.MTU, up.
// Equivalent to: ip link add NAME type bridge; ip link set NAME alias TAG mtu MTU up.
// It reports whether it created the bridge. A link of that name that is not
// this network's bridge is a conflict: mynet never adopts foreign links.
func (d *Dataplane) ensureBridge(n model.Network) (created bool, err error) {
	tag := d.tag("net", n.ID)
	if err := model.ValidateIfName(n.Bridge); err != nil {
		return false, fmt.Errorf("bridge of network %s: %w", model.Short(n.ID), err)
	}
	l, err := d.nl.LinkByName(n.Bridge)
	defer d.deleteIfFailed(&l, &created, &err)
	switch {
	case isNotFound(err):
		mac, err := netutil.RandomMAC()
		if err != nil {
			return false, err
		}
		// A fixed MAC keeps the bridge's address (and its IPv6 link-local
		// address) from following whichever port has the lowest MAC as
		// containers come and go, as Docker's bridge driver does.
		l, err = d.addLink(newLink{kind: "bridge", name: n.Bridge, mac: mac}, tag)
		if errors.Is(err, unix.EEXIST) {
			// Someone made the name meanwhile: not ours, whatever it is.
			return false, fmt.Errorf("interface %s appeared while creating the bridge of network %s; choose another com.docker.network.bridge.name", n.Bridge, model.Short(n.ID))
		}
		if err != nil {
			return false, fmt.Errorf("create bridge %s for network %s: %w", n.Bridge, model.Short(n.ID), err)
		}
		created = true
		d.log.Debug("bridge created", "bridge", n.Bridge, "index", l.Attrs().Index)
	case err != nil:
		return false, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if l.Type() != "bridge" || l.Attrs().Alias != tag {
		return false, fmt.Errorf("interface %s already exists and is not mynet's bridge for network %s (type %s, alias %q); choose another com.docker.network.bridge.name", n.Bridge, model.Short(n.ID), l.Type(), l.Attrs().Alias)
	}
	// Set the MTU as a separate request even on a new bridge: only then does
	// the kernel pin it (BROPT_MTU_SET_BY_USER) instead of following its
	// ports' MTUs.
	if n.MTU > 0 && (created || l.Attrs().MTU != n.MTU) {
		if err := d.nl.LinkSetMTU(l, n.MTU); err != nil {
			return created, fmt.Errorf("set MTU %d on bridge %s: %w", n.MTU, n.Bridge, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return created, fmt.Errorf("set bridge %s up: %w", n.Bridge, err)
		}
	}
	return created, nil
}

// ensureAddrs puts each gateway address on the bridge, and pushes the
// removal of those that were missing onto undo.
// Equivalent to: ip addr add GATEWAY/LEN dev BRIDGE.
// bridgeGateways are the subnets whose gateway the bridge carries: those
// that have one, except in a family the network keeps off the bridge
// (inhibit_ipv4, gateway mode isolated). Docker's bridge does the same
// (moby libnetwork/drivers/bridge, setupBridgeIPv4, setupBridgeIPv6).
func bridgeGateways(n model.Network) []model.Subnet {
	var out []model.Subnet
	for _, fam := range []struct {
		subnets []model.Subnet
		off     bool
	}{{n.IPv4, n.NoBridgeIPv4}, {n.IPv6, n.NoBridgeIPv6}} {
		for _, s := range fam.subnets {
			if s.Gateway.IsValid() && !fam.off {
				out = append(out, s)
			}
		}
	}
	return out
}

func (d *Dataplane) ensureAddrs(n model.Network, undo *netutil.Undo) error {
	l, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	have, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", n.Bridge, err)
	}
	for _, s := range bridgeGateways(n) {
		addr := &netlink.Addr{IPNet: netutil.IPNet(s.Gateway)}
		if s.Gateway.Addr().Is6() {
			// The gateway must answer at once; duplicate address detection
			// would leave it tentative for a second or more.
			addr.Flags = unix.IFA_F_NODAD
		}
		existed := slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == addr.IPNet.String() })
		if err := d.nl.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("add gateway %s to bridge %s: %w", s.Gateway, n.Bridge, err)
		}
		if !existed {
			undo.Push("delete gateway "+s.Gateway.String()+" from bridge "+n.Bridge, func() error {
				if err := d.nl.AddrDel(l, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !isNotFound(err) {
					return fmt.Errorf("delete gateway %s from bridge %s: %w", s.Gateway, n.Bridge, err)
				}
				return nil
			})
		}
	}
	return nil
}

// ensureVeth makes the endpoint's veth pair exist, host end on the bridge
// and up, container end down with the endpoint's MAC.
// Equivalent to: ip link add HOST mtu MTU master BRIDGE type veth peer name
// CONTAINER address MAC; ip link set HOST up.
func (d *Dataplane) ensureVeth(ep model.Endpoint) (created bool, bridgeIndex int, err error) {
	tag := d.tag("ep", ep.ID)
	br, err := d.endpointBridge(ep)
	if err != nil {
		return false, 0, err
	}
	l, err := d.lookupVeth(ep)
	defer d.deleteIfFailed(&l, &created, &err)
	switch {
	case isNotFound(err):
		if l, err = d.createVeth(ep, br.Attrs().Index, tag); err != nil {
			return false, 0, err
		}
		created = true
		d.log.Debug("veth created", "veth", ep.HostVeth, "peer", ep.ContainerVeth, "index", l.Attrs().Index)
	case err != nil:
		return false, 0, err
	}
	if l.Type() != "veth" || l.Attrs().Alias != tag {
		return false, 0, fmt.Errorf("interface %s already exists and is not mynet's veth for endpoint %s (type %s, alias %q)", ep.HostVeth, model.Short(ep.ID), l.Type(), l.Attrs().Alias)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := d.nl.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return created, 0, fmt.Errorf("attach veth %s to bridge %s: %w", ep.HostVeth, ep.Bridge, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return created, 0, fmt.Errorf("set veth %s up: %w", ep.HostVeth, err)
		}
	}
	return created, br.Attrs().Index, nil
}

// endpointBridge checks the endpoint's interface names and returns its
// network's bridge.
func (d *Dataplane) endpointBridge(ep model.Endpoint) (netlink.Link, error) {
	for _, name := range []string{ep.HostVeth, ep.ContainerVeth} {
		if err := model.ValidateIfName(name); err != nil {
			return nil, fmt.Errorf("veth of endpoint %s: %w", model.Short(ep.ID), err)
		}
	}
	br, err := d.nl.LinkByName(ep.Bridge)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s for endpoint %s: %w", ep.Bridge, model.Short(ep.ID), err)
	}
	// A port changes its bridge (its MAC, its forwarding): never add one
	// to a bridge that is not this network's.
	if br.Type() != "bridge" || br.Attrs().Alias != d.tag("net", ep.NetworkID) {
		return nil, fmt.Errorf("interface %s is not mynet's bridge for network %s (type %s, alias %q); endpoint %s cannot be attached to it", ep.Bridge, model.Short(ep.NetworkID), br.Type(), br.Attrs().Alias, model.Short(ep.ID))
	}
	return br, nil
}

// lookupVeth returns the endpoint's host veth, or a not-found error when
// it has none or only one waiting for the janitor.
func (d *Dataplane) lookupVeth(ep model.Endpoint) (netlink.Link, error) {
	l, err := d.nl.LinkByName(ep.HostVeth)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	if err == nil && d.reaper.doomed(l.Attrs().Index) {
		// The veth of a deleted endpoint with the same ID, still waiting
		// for the janitor: adopting it would hand the engine a pair that
		// the janitor deletes a moment later. Delete it now, by index, so
		// neither this call nor the janitor can touch the new pair. Its
		// container end may still be in a sandbox being torn down; the
		// pair goes as a whole either way.
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete veth %s of the deleted endpoint %s before creating it again: %w", ep.HostVeth, model.Short(ep.ID), err)
		}
		d.log.Debug("veth of a deleted endpoint deleted before its reuse", "veth", ep.HostVeth)
		return nil, netlink.LinkNotFoundError{}
	}
	return l, err
}

// createVeth creates the endpoint's veth pair on the bridge at
// bridgeIndex, tagged with tag.
func (d *Dataplane) createVeth(ep model.Endpoint, bridgeIndex int, tag string) (netlink.Link, error) {
	// One queue each way, said explicitly: without it the kernel
	// allocates a queue per CPU, then cuts the device down to one
	// (veth_init_queues), and the cut waits for an RCU grace period
	// under the RTNL lock, twice per pair, stalling every link change
	// on the host. The data path is the same: a veth gets one
	// active queue either way. Up and on the bridge from the start:
	// fewer requests under the RTNL lock.
	veth := newLink{kind: "veth", name: ep.HostVeth, mtu: ep.MTU, master: bridgeIndex, up: true, oneQueue: true,
		peer: &newLink{name: ep.ContainerVeth, mac: ep.MAC, mtu: ep.MTU, oneQueue: true}}
	l, err := d.addLink(veth, tag)
	if errors.Is(err, unix.EXFULL) {
		// The bridge has no free port number ("exchange full", the
		// kernel's 1024 ports): veths of deleted endpoints may still
		// hold theirs while they wait for the janitor (reap.go).
		// Delete them now and try again.
		d.Sync()
		l, err = d.addLink(veth, tag)
	}
	if errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("interface %s or %s appeared while creating the veth of endpoint %s on network %s", ep.HostVeth, ep.ContainerVeth, model.Short(ep.ID), model.Short(ep.NetworkID))
	}
	if err != nil {
		return nil, fmt.Errorf("create veth %s for endpoint %s on network %s: %w", ep.HostVeth, model.Short(ep.ID), model.Short(ep.NetworkID), err)
	}
	return l, nil
}

// deleteIfFailed is deferred by an ensure that may create a link: when it
// fails after creating one, the new link goes again and created is false.
func (d *Dataplane) deleteIfFailed(l *netlink.Link, created *bool, err *error) {
	if *err != nil && *created {
		*err = d.deleteNew(*l, *err)
		*created = false
	}
}

// deleteNew deletes a link this call created and could not finish setting
// up: the caller's undo only covers links it was told were created.
func (d *Dataplane) deleteNew(l netlink.Link, err error) error {
	if derr := d.nl.LinkDel(l); derr != nil && !isNotFound(derr) {
		return fmt.Errorf("%w (deleting the new link %s failed too: %w)", err, l.Attrs().Name, derr)
	}
	return err
}

// newLink is a link mynet creates: a bridge, or a veth pair.
type newLink struct {
	kind     string // "bridge" or "veth"; empty for a veth's peer
	name     string
	mac      net.HardwareAddr // nil: the kernel picks one
	mtu      int              // 0: the kernel's default
	master   int              // index of the bridge to attach to; 0: none
	up       bool
	oneQueue bool     // one tx and one rx queue instead of one per CPU
	peer     *newLink // a veth's other end
}

// addLink creates spec and tags it as mynet's with tag, and returns it as
// the kernel made it. The kernel ignores IFLA_IFALIAS in RTM_NEWLINK, so
// the tag is a second request, made by the index the kernel reported: a
// link renamed in between is still tagged, and a link of the requested name
// that is not the one just created is never tagged. A created link whose
// name is not the one asked for (a '%d' the kernel expanded, a rename) is
// deleted again: nothing downstream would find it. A crash between the two
// requests leaves an untagged link, which the pending state record of the
// operation names.
func (d *Dataplane) addLink(spec newLink, tag string) (netlink.Link, error) {
	index, err := d.createLink(spec)
	if err != nil {
		return nil, err
	}
	l, err := d.nl.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("look up %s (index %d) after creating it: %w", spec.name, index, err)
	}
	if err := d.nl.LinkSetAlias(l, tag); err != nil {
		err = fmt.Errorf("tag %s (index %d) as mynet's: %w", spec.name, index, err)
		if derr := d.nl.LinkDel(l); derr != nil && !isNotFound(derr) {
			err = fmt.Errorf("%w; deleting it again failed too: %w", err, derr)
		}
		return nil, err
	}
	l.Attrs().Alias = tag
	if got := l.Attrs().Name; got != spec.name {
		err := fmt.Errorf("the kernel named the new link %s, not %s", got, spec.name)
		if derr := d.nl.LinkDel(l); derr != nil && !isNotFound(derr) {
			err = fmt.Errorf("%w; deleting it again failed too (it is tagged %s, so the reconcile removes it): %w", err, tag, derr)
		}
		return nil, err
	}
	return l, nil
}

// createLink sends one RTM_NEWLINK for spec and returns the new link's
// index. It asks the kernel to echo the link it made (NLM_F_ECHO, honoured
// for links since Linux 6.3), so the link is identified by what the kernel
// did, not by the name asked for. Older kernels send no echo; the link is
// then looked up by name, which names that passed model.ValidateIfName
// (no '%') keep.
func (d *Dataplane) createLink(spec newLink) (int, error) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK|unix.NLM_F_ECHO)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: d.rtnl}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	if spec.up {
		msg.Change, msg.Flags = unix.IFF_UP, unix.IFF_UP
	}
	req.AddData(msg)
	for _, a := range spec.attrs() {
		req.AddData(a)
	}
	if spec.master > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(spec.master))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated(spec.kind))
	if spec.peer != nil {
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
		nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
		for _, a := range spec.peer.attrs() {
			peer.AddChild(a)
		}
	}
	req.AddData(info)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m) >= unix.SizeofIfInfomsg {
			if index := int(nl.DeserializeIfInfomsg(m).Index); index > 0 {
				return index, nil
			}
		}
	}
	l, err := d.nl.LinkByName(spec.name)
	if err != nil {
		return 0, fmt.Errorf("look up %s after creating it: %w", spec.name, err)
	}
	return l.Attrs().Index, nil
}

// openRTNL opens the socket createLink uses, in the calling thread's
// network namespace, like the Dataplane's other handles.
func openRTNL() (*nl.SocketHandle, error) {
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return &nl.SocketHandle{Socket: s}, nil
}

// attrs are the attributes of one end, as "ip link add" sends them.
func (spec newLink) attrs() []*nl.RtAttr {
	a := []*nl.RtAttr{nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(spec.name))}
	if spec.mtu > 0 {
		a = append(a, nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(spec.mtu))))
	}
	if spec.mac != nil {
		a = append(a, nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(spec.mac)))
	}
	if spec.oneQueue {
		a = append(a, nl.NewRtAttr(unix.IFLA_NUM_TX_QUEUES, nl.Uint32Attr(1)), nl.NewRtAttr(unix.IFLA_NUM_RX_QUEUES, nl.Uint32Attr(1)))
	}
	return a
}

// removeOwnedLink deletes name if it carries tag. A missing link, or one
// that is not ours (the name was reused by someone else), is left alone.
func (d *Dataplane) removeOwnedLink(name, tag string) error {
	l, err := d.nl.LinkByName(name)
	if isNotFound(err) {
		d.log.Debug("link already gone", "link", name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if l.Attrs().Alias != tag {
		d.log.Warn("not deleting link that mynet does not own", "link", name, "alias", l.Attrs().Alias)
		return nil
	}
	if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	d.log.Debug("link removed", "link", name)
	return nil
}

// removeLink deletes a link by name; a missing link is success.
// Equivalent to: ip link del NAME.
func (d *Dataplane) removeLink(name string) error {
	l, err := d.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	d.log.Debug("link removed", "link", name)
	return nil
}

func (d *Dataplane) linkList() ([]netlink.Link, error) {
	links, err := retryDump(d.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	return links, nil
}

// retryDump repeats a netlink dump that the kernel interrupted because the
// table changed under it (NLM_F_DUMP_INTR); its partial result is unusable.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}
