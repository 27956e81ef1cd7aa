package bridge

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/netutil"
)

// ensureBridge makes n.Bridge exist as mynet's bridge for n, with n.MTU, up.
// Equivalent to: ip link add NAME type bridge; ip link set NAME alias TAG mtu MTU up.
// It reports whether it created the bridge. A link of that name that is not
// this network's bridge is a conflict: mynet never adopts foreign links.
func (d *Dataplane) ensureBridge(n Network) (created bool, err error) {
	tag := d.tag("net", n.ID)
	l, err := d.nl.LinkByName(n.Bridge)
	switch {
	case isNotFound(err):
		mac, err := netutil.RandomMAC()
		if err != nil {
			return false, err
		}
		attrs := netlink.NewLinkAttrs()
		// A fixed MAC keeps the bridge's address (and its IPv6 link-local
		// address) from following whichever port has the lowest MAC as
		// containers come and go, as Docker's bridge driver does.
		attrs.Name, attrs.HardwareAddr = n.Bridge, mac
		if err := d.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return false, fmt.Errorf("create bridge %s for network %s: %w", n.Bridge, netutil.Short(n.ID), err)
		}
		created = true
		if l, err = d.tagNew(n.Bridge, tag); err != nil {
			return created, err
		}
		d.log.Debug("bridge created", "bridge", n.Bridge)
	case err != nil:
		return false, fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	if l.Type() != "bridge" || l.Attrs().Alias != tag {
		return false, fmt.Errorf("interface %s already exists and is not mynet's bridge for network %s (type %s, alias %q); choose another com.docker.network.bridge.name", n.Bridge, netutil.Short(n.ID), l.Type(), l.Attrs().Alias)
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
func (d *Dataplane) ensureAddrs(n Network, undo *netutil.Undo) error {
	l, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", n.Bridge, err)
	}
	have, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", n.Bridge, err)
	}
	for _, s := range append(append([]Subnet(nil), n.IPv4...), n.IPv6...) {
		if !s.Gateway.IsValid() {
			continue
		}
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
func (d *Dataplane) ensureVeth(ep Endpoint) (created bool, bridgeIndex int, err error) {
	tag := d.tag("ep", ep.ID)
	br, err := d.nl.LinkByName(ep.Bridge)
	if err != nil {
		return false, 0, fmt.Errorf("look up bridge %s for endpoint %s: %w", ep.Bridge, netutil.Short(ep.ID), err)
	}
	l, err := d.nl.LinkByName(ep.HostVeth)
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MasterIndex = ep.HostVeth, br.Attrs().Index
		if ep.MTU > 0 {
			attrs.MTU = ep.MTU // the peer inherits it
		}
		// One queue each way, said explicitly: without it the kernel
		// allocates a queue per CPU, then cuts the device down to one
		// (veth_init_queues), and the cut waits for an RCU grace period
		// under the RTNL lock, twice per pair, stalling every link change
		// on the host. The data path is the same: a veth gets one
		// active queue either way.
		attrs.NumTxQueues, attrs.NumRxQueues = 1, 1
		// Up from the start: one request less under the RTNL lock.
		attrs.Flags = net.FlagUp
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: ep.ContainerVeth, PeerHardwareAddr: ep.MAC, PeerNumTxQueues: 1, PeerNumRxQueues: 1}
		err := d.nl.LinkAdd(veth)
		if errors.Is(err, unix.EXFULL) {
			// The bridge has no free port number ("exchange full", the
			// kernel's 1024 ports): veths of deleted endpoints may still
			// hold theirs while they wait for the janitor (reap.go).
			// Delete them now and try again.
			d.Sync()
			err = d.nl.LinkAdd(veth)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return false, 0, fmt.Errorf("create veth %s for endpoint %s on network %s: %w", ep.HostVeth, netutil.Short(ep.ID), netutil.Short(ep.NetworkID), err)
		}
		created = true
		if l, err = d.tagNew(ep.HostVeth, tag); err != nil {
			return created, 0, err
		}
		d.log.Debug("veth created", "veth", ep.HostVeth, "peer", ep.ContainerVeth)
	case err != nil:
		return false, 0, fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	if l.Type() != "veth" || l.Attrs().Alias != tag {
		return false, 0, fmt.Errorf("interface %s already exists and is not mynet's veth for endpoint %s (type %s, alias %q)", ep.HostVeth, netutil.Short(ep.ID), l.Type(), l.Attrs().Alias)
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

// tagNew sets the ownership alias on a link this call just created. The
// kernel ignores IFLA_IFALIAS in RTM_NEWLINK, so it is a second request; a
// crash in between leaves an untagged link, which the pending state record
// of the operation names, so recovery still finds it. EEXIST on create means
// someone raced us to the name: the link then already has an alias (or none)
// and the caller's ownership check rejects it, so only alias-less links are
// tagged here.
func (d *Dataplane) tagNew(name, tag string) (netlink.Link, error) {
	l, err := d.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up %s after creating it: %w", name, err)
	}
	if l.Attrs().Alias != "" {
		return l, nil
	}
	if err := d.nl.LinkSetAlias(l, tag); err != nil {
		return l, fmt.Errorf("tag %s as mynet's: %w", name, err)
	}
	l.Attrs().Alias = tag
	return l, nil
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

// writeSysctl sets /proc/sys/<key>.
// Equivalent to: sysctl -w key=value.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == value+"\n" {
		return nil
	}
	return os.WriteFile(path, []byte(value), 0o644)
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-min(1, len(b))]), nil
}
