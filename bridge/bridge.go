package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/netutil"
)

// Network is what the dataplane needs to build one network.
type Network struct {
	ID     string
	Bridge string
	MTU    int // 0: kernel default
	IPv4   []Subnet
	IPv6   []Subnet
}

// Subnet is a pool with the gateway address the bridge carries; Gateway is
// invalid when the IPAM driver gave none.
type Subnet struct {
	Pool    netip.Prefix
	Gateway netip.Prefix // gateway address with the pool's length, e.g. 10.0.0.1/24
}

// Endpoint is one veth pair: HostVeth is enslaved to the network's bridge,
// ContainerVeth is what Join hands to the engine to move into the sandbox.
type Endpoint struct {
	NetworkID     string
	ID            string
	Bridge        string
	HostVeth      string
	ContainerVeth string
	MAC           net.HardwareAddr
	MTU           int
}

// Names derived from IDs, each within IFNAMSIZ: 3-character prefix plus the
// 12-character short ID Docker shows.
const (
	bridgePrefix        = "mn-"
	hostVethPrefix      = "mnv"
	containerVethPrefix = "mnc"
)

// BridgeName is the default bridge name of a network.
func BridgeName(networkID string) string { return bridgePrefix + netutil.Short(networkID) }

// VethNames are the host and container ends of an endpoint's veth pair.
func VethNames(endpointID string) (host, container string) {
	return hostVethPrefix + netutil.Short(endpointID), containerVethPrefix + netutil.Short(endpointID)
}

// Config configures a Dataplane.
type Config struct {
	// Instance is the plugin's name (--name); it scopes link tags and chain
	// names so two instances on one host never touch each other's objects.
	Instance string
	Log      *slog.Logger
	// Netlink is the handle to use; nil opens one in the calling thread's
	// network namespace.
	Netlink *netlink.Handle
	// IPv4 is the iptables backend; nil uses the iptables binary on PATH,
	// the one dockerd uses.
	IPv4 IPTables
	// FailAt makes the named step fail, for rollback tests.
	FailAt string
}

// Dataplane builds networks and endpoints in one network namespace.
type Dataplane struct {
	instance string
	log      *slog.Logger
	nl       *netlink.Handle
	fw       *firewall
	failAt   string
}

// New returns a Dataplane. It touches nothing in the kernel.
func New(cfg Config) (*Dataplane, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	nl := cfg.Netlink
	if nl == nil {
		var err error
		if nl, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("open netlink handle: %w", err)
		}
	}
	ipt := cfg.IPv4
	if ipt == nil {
		var err error
		if ipt, err = newIPTables(false); err != nil {
			return nil, err
		}
	}
	return &Dataplane{
		instance: cfg.Instance,
		log:      cfg.Log,
		nl:       nl,
		fw:       newFirewall(cfg.Instance, ipt, cfg.Log),
		failAt:   cfg.FailAt,
	}, nil
}

// Close releases the netlink handle.
func (d *Dataplane) Close() { d.nl.Close() }

// Chains names the iptables chains this instance owns, for operators and
// tests.
func (d *Dataplane) Chains() []string { return d.fw.chains.all() }

// EnsureNetwork makes the network's bridge, addresses and rules exist.
// On error, everything it created in this call is removed again.
// DeleteNetwork undoes it.
func (d *Dataplane) EnsureNetwork(ctx context.Context, n Network) (retErr error) {
	log := d.log.With("network_id", netutil.Short(n.ID), "bridge", n.Bridge)
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, log); cerr != nil {
			retErr = fmt.Errorf("%w (rollback incomplete: %w)", retErr, cerr)
		}
	}()
	if err := ensureForwarding(log); err != nil {
		return err
	}
	created, err := d.ensureBridge(n)
	if err != nil {
		return err
	}
	if created {
		undo.Push("delete bridge "+n.Bridge, func() error { return d.removeLink(n.Bridge) })
	}
	if err := d.step("bridge"); err != nil {
		return err
	}
	if err := d.ensureAddrs(n); err != nil {
		return err
	}
	if len(n.IPv6) > 0 {
		// A container must not be able to become the host's IPv6 router
		// (CVE-2020-10749).
		if err := writeSysctl(fmt.Sprintf("net/ipv6/conf/%s/accept_ra", n.Bridge), "0"); err != nil {
			return fmt.Errorf("disable router advertisements on bridge %s: %w", n.Bridge, err)
		}
	}
	if err := d.fw.ensureNetwork(n); err != nil {
		return err
	}
	undo.Push("delete rules of network "+netutil.Short(n.ID), func() error { return d.fw.removeNetwork(n.ID) })
	return d.step("rules")
}

// DeleteNetwork removes the network's rules and bridge. Objects that are
// already gone are not an error.
func (d *Dataplane) DeleteNetwork(ctx context.Context, n Network) error {
	var errs []error
	if err := d.fw.removeNetwork(n.ID); err != nil {
		errs = append(errs, err)
	}
	if err := d.removeOwnedLink(n.Bridge, d.tag("net", n.ID)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete network %s: %w", netutil.Short(n.ID), err)
	}
	return nil
}

// EnsureEndpoint makes the endpoint's veth pair exist with its host end on
// the bridge and up. DeleteEndpoint undoes it.
func (d *Dataplane) EnsureEndpoint(ctx context.Context, ep Endpoint) (retErr error) {
	log := d.log.With("network_id", netutil.Short(ep.NetworkID), "endpoint_id", netutil.Short(ep.ID))
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, log); cerr != nil {
			retErr = fmt.Errorf("%w (rollback incomplete: %w)", retErr, cerr)
		}
	}()
	created, err := d.ensureVeth(ep)
	if err != nil {
		return err
	}
	if created {
		undo.Push("delete veth "+ep.HostVeth, func() error { return d.removeLink(ep.HostVeth) })
	}
	return d.step("veth")
}

// DeleteEndpoint removes the veth pair; both ends go with the host end. The
// container end may be in a sandbox or already gone with it.
func (d *Dataplane) DeleteEndpoint(ctx context.Context, ep Endpoint) error {
	if err := d.removeOwnedLink(ep.HostVeth, d.tag("ep", ep.ID)); err != nil {
		return fmt.Errorf("delete endpoint %s on network %s: %w", netutil.Short(ep.ID), netutil.Short(ep.NetworkID), err)
	}
	return nil
}

// EndpointExists reports whether the endpoint's host veth is present; after
// a reboot or a container's death it is not, and the endpoint is stale.
func (d *Dataplane) EndpointExists(ep Endpoint) (bool, error) {
	l, err := d.nl.LinkByName(ep.HostVeth)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	return l.Attrs().Alias == d.tag("ep", ep.ID), nil
}

// RemoveOrphans deletes links and rules tagged with this instance whose
// network or endpoint is not in keep: leftovers of a crash, or of deletes
// the engine never sent. Objects of other instances are not touched.
func (d *Dataplane) RemoveOrphans(ctx context.Context, networks, endpoints map[string]bool) error {
	var errs []error
	links, err := d.linkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		kind, id, ok := d.parseTag(l.Attrs().Alias)
		if !ok || (kind == "net" && networks[id]) || (kind == "ep" && endpoints[id]) {
			continue
		}
		d.log.Info("removing orphaned link", "link", l.Attrs().Name, "kind", kind, "id", netutil.Short(id))
		if err := d.removeLink(l.Attrs().Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.fw.removeOrphans(networks); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// HostPrefixes lists the host's connected routes and interface addresses of
// one family: subnets a new pool must not overlap.
func (d *Dataplane) HostPrefixes(v6 bool) ([]netip.Prefix, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	var out []netip.Prefix
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return d.nl.RouteListFiltered(family, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		// Only routes without a gateway: a default or VPN route via a
		// gateway would otherwise rule out everything (moby PR 42598).
		if r.Dst == nil || r.Gw != nil {
			continue
		}
		if p, ok := prefixFromIPNet(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p)
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, family) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func (d *Dataplane) tag(kind, id string) string {
	return "mynet:" + d.instance + ":" + kind + ":" + id
}

func (d *Dataplane) parseTag(alias string) (kind, id string, ok bool) {
	rest, ok := strings.CutPrefix(alias, "mynet:"+d.instance+":")
	if !ok {
		return "", "", false
	}
	kind, id, ok = strings.Cut(rest, ":")
	return kind, id, ok && (kind == "net" || kind == "ep")
}

// step fails when the test hook names it.
func (d *Dataplane) step(name string) error {
	if d.failAt == name {
		return fmt.Errorf("injected failure after step %q", name)
	}
	return nil
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
