package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// Config configures a Dataplane.
type Config struct {
	// Instance is the plugin's name (--name); it scopes link tags and chain
	// names so two instances on one host never touch each other's objects.
	Instance string
	Log      *slog.Logger

	// Generation is the state file's generation ID, put in every link
	// tag (see Tag); "" writes the previous release's tags.
	Generation string

	// Netlink is the handle to use; nil opens one in the calling thread's
	// network namespace.
	Netlink *netlink.Handle
	// IPv4 and IPv6 are the iptables backends; nil uses the iptables and
	// ip6tables binaries on PATH, the ones dockerd uses. Without ip6tables,
	// IPv6 traffic is not filtered, and networks with IPv6 are refused.
	IPv4, IPv6 IPTables
}

// Dataplane builds networks and endpoints in one network namespace.
type Dataplane struct {
	instance string
	log      *slog.Logger
	nl       *netlink.Handle
	// rtnl sends the requests the netlink package has no call for: link
	// creation with NLM_F_ECHO (link.go).
	rtnl     *vnl.SocketHandle
	fw4, fw6 *firewall // fw6 is nil without ip6tables

	generation string // in the link tags, see Tag

	// janitor runs best-effort cleanups (conntrack and neighbour flushes,
	// which cost a full conntrack dump each) after the request has been
	// answered, on a netlink handle of its own.
	janitor     chan func(*netlink.Handle)
	janitorDone chan struct{}
	nft         *nftSockets       // the anti-spoofing table's sockets (spoof.go)
	reaper      *reaper           // veths waiting for deletion (reap.go)
	forgetQueue batch[forgetItem] // addresses waiting for forgetQueued
	// packetFD sends gratuitous ARPs; -1 when it could not be opened
	// (no CAP_NET_RAW), and then there are none.
	packetFD int
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
	// Opened here, in the caller's network namespace, so that the janitor
	// goroutine works there whatever thread it runs on.
	nlJanitor, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	rtnl, err := openRTNL()
	if err != nil {
		nlJanitor.Close()
		return nil, err
	}
	d := &Dataplane{instance: cfg.Instance, generation: cfg.Generation, log: cfg.Log, nl: nl, rtnl: rtnl,
		janitor: make(chan func(*netlink.Handle), 256), janitorDone: make(chan struct{})}
	d.nft = openNFT()
	if d.packetFD, err = openAnnounceSocket(); err != nil {
		cfg.Log.Warn("new endpoints will not be announced with a gratuitous ARP", "err", err)
	}
	d.reaper = newReaper(cfg.Instance)
	go func() {
		defer close(d.janitorDone)
		defer nlJanitor.Close()
		for job := range d.janitor {
			job(nlJanitor)
		}
	}()
	ipt4 := cfg.IPv4
	if ipt4 == nil {
		var err error
		if ipt4, err = newIPTables(false); err != nil {
			return nil, err
		}
	}
	d.fw4 = newFirewall(cfg.Instance, ipt4, false, cfg.Log)
	ipt6 := cfg.IPv6
	if ipt6 == nil {
		var err error
		if ipt6, err = newIPTables(true); err != nil {
			cfg.Log.Warn("ip6tables unavailable: networks with IPv6 will be refused", "err", err)
		}
	}
	if ipt6 != nil {
		d.fw6 = newFirewall(cfg.Instance, ipt6, true, cfg.Log)
	}
	return d, nil
}

// firewalls are the families rules are kept in.
func (d *Dataplane) firewalls() []*firewall {
	if d.fw6 == nil {
		return []*firewall{d.fw4}
	}
	return []*firewall{d.fw4, d.fw6}
}

// forAll runs fn for each family and joins the errors.
func (d *Dataplane) forAll(fn func(*firewall) error) error {
	var errs []error
	for _, fw := range d.firewalls() {
		errs = append(errs, fn(fw))
	}
	return errors.Join(errs...)
}

// Close finishes queued cleanups and releases the netlink handles and
// sockets.
func (d *Dataplane) Close() {
	close(d.janitor)
	<-d.janitorDone
	d.nl.Close()
	d.rtnl.Close()
	d.nft.close()
	d.reaper.close()
	if d.packetFD >= 0 {
		unix.Close(d.packetFD)
	}
}

// Sync waits until the cleanups queued so far have run.
func (d *Dataplane) Sync() {
	done := make(chan struct{})
	d.janitor <- func(*netlink.Handle) { close(done) } // behind them, even when the queue is full
	<-done
}

// later queues a best-effort cleanup; when the queue is full it runs now.
func (d *Dataplane) later(job func(*netlink.Handle)) {
	select {
	case d.janitor <- job:
	default:
		job(d.nl)
	}
}

// Chains names the iptables chains this instance owns, for operators and
// tests.
func (d *Dataplane) Chains() []string { return d.fw4.chains.All() }

// EnsureNetwork makes the network's bridge, addresses and rules exist.
// On error, everything it created in this call is removed again, and only
// that: the reconcile calls it to repair a network whose other rules are
// live. DeleteNetwork undoes it.
func (d *Dataplane) EnsureNetwork(ctx context.Context, n model.Network) (retErr error) {
	log := d.log.With("network_id", model.Short(n.ID), "bridge", n.Bridge)
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, log); cerr != nil {
			retErr = fmt.Errorf("%w (rollback incomplete: %w)", retErr, cerr)
		}
	}()
	what := "network " + model.Short(n.ID)
	if err := stopped(ctx, "creating "+what); err != nil {
		return err
	}
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
	if err := failpoint.Inject("bridge.network.bridge"); err != nil {
		return err
	}
	if err := stopped(ctx, "the addresses of bridge "+n.Bridge+" of "+what); err != nil {
		return err
	}
	if err := d.ensureAddrs(n, &undo); err != nil {
		return err
	}
	if err := stopped(ctx, "the settings of bridge "+n.Bridge+" of "+what); err != nil {
		return err
	}
	if err := d.bridgeSysctls(n); err != nil {
		return err
	}
	for _, fw := range d.firewalls() {
		if err := fw.ensureNetwork(ctx, n, &undo); err != nil {
			return err
		}
	}
	return failpoint.Inject("bridge.network.rules")
}

// bridgeSysctls sets the bridge's per-interface switches.
func (d *Dataplane) bridgeSysctls(n model.Network) error {
	if len(n.IPv6) > 0 {
		if d.fw6 == nil {
			return fmt.Errorf("network %s has IPv6 but ip6tables is not available to isolate it; install ip6tables", model.Short(n.ID))
		}
		// A container must not be able to become the host's IPv6 router
		// (CVE-2020-10749).
		if err := ignoreRouterAdvertisements(n.Bridge); err != nil {
			return err
		}
	}
	if !n.ICC {
		// Without br_netfilter, frames between two ports of the bridge
		// never reach iptables and the ICC drop would silently do nothing.
		if v, err := readSysctl("net/bridge/bridge-nf-call-iptables"); err != nil || v != "1" {
			return fmt.Errorf("network %s disables inter-container communication, which needs br_netfilter with net.bridge.bridge-nf-call-iptables=1 (run: modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1)", model.Short(n.ID))
		}
	}
	if !n.Internal {
		// Lets the host's own 127.0.0.1 reach published ports: the DNAT
		// target is on the bridge, and the kernel drops loopback sources
		// routed elsewhere unless this is set.
		if err := d.setRouteLocalnet(n.Bridge); err != nil {
			d.log.Warn("published ports will not answer on 127.0.0.1", "bridge", n.Bridge, "err", err)
		}
	}
	return nil
}

// DeleteNetwork removes the network's rules and bridge. Objects that are
// already gone are not an error.
//
// Each step checks ctx first; what a deadline leaves is tagged, an orphan
// for the reconcile. A rollback passes a context without a deadline.
func (d *Dataplane) DeleteNetwork(ctx context.Context, n model.Network) error {
	var errs []error
	steps := []struct {
		what string
		do   func() error
	}{
		{"the rules", func() error { return d.forAll(func(fw *firewall) error { return fw.removeNetwork(n.ID) }) }},
		{"bridge " + n.Bridge, func() error { return d.removeOwnedLink(n.Bridge, d.tag("net", n.ID)) }},
		// The engine deletes a network only after its endpoints, so the
		// table of anti-spoofing rules is often empty now; another
		// network's next endpoint creates it again.
		{"the empty anti-spoofing table", d.removeEmptySpoofTable},
	}
	for _, s := range steps {
		if err := stopped(ctx, "removing "+s.what); err != nil {
			errs = append(errs, err)
			break
		}
		if err := s.do(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete network %s: %w", model.Short(n.ID), err)
	}
	return nil
}

// EnsureEndpoint makes the endpoint's veth pair exist with its host end on
// the bridge and up. DeleteEndpoint undoes it.
func (d *Dataplane) EnsureEndpoint(ctx context.Context, ep model.Endpoint) (retErr error) {
	log := d.log.With("network_id", model.Short(ep.NetworkID), "endpoint_id", model.Short(ep.ID))
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, log); cerr != nil {
			retErr = fmt.Errorf("%w (rollback incomplete: %w)", retErr, cerr)
		}
	}()
	what := "endpoint " + model.Short(ep.ID) + " on network " + model.Short(ep.NetworkID)
	if err := stopped(ctx, "creating veth "+ep.HostVeth+" of "+what); err != nil {
		return err
	}
	created, brIndex, err := d.ensureVeth(ep)
	if err != nil {
		return err
	}
	if created {
		undo.Push("delete veth "+ep.HostVeth, func() error { return d.removeLink(ep.HostVeth) })
	}
	if err := failpoint.Inject("bridge.endpoint.veth"); err != nil {
		return err
	}
	if err := stopped(ctx, "the anti-spoofing rules of "+what); err != nil {
		return err
	}
	if ep.AntiSpoofing {
		added, err := d.ensureSpoofCheck(ep)
		if err != nil {
			return err
		}
		if added { // else the veth was filtered before: keep it so
			undo.Push("delete anti-spoofing rules of "+ep.HostVeth, func() error { return d.RemoveSpoofCheck(ep) })
		}
	}
	if err := failpoint.Inject("bridge.endpoint.filter"); err != nil {
		return err
	}
	if created {
		// The address may have belonged to another container a moment
		// ago: forget its flows and the host's neighbour entry for the old
		// MAC, and tell the other neighbours the new one. Not on a repeat:
		// the endpoint's own flows are live.
		d.forgetAddresses(ep)
		d.announceAddresses(ep, brIndex)
	}
	return nil
}

// DeleteEndpoint removes the endpoint's port rules and veth pair; both ends
// go with the host end. The container end may be in a sandbox or already
// gone with it. Conntrack entries of its addresses are flushed, so a reused
// address or port is not black-holed by a stale flow.
//
// Like DeleteNetwork, it checks ctx before each step.
func (d *Dataplane) DeleteEndpoint(ctx context.Context, ep model.Endpoint) error {
	var errs []error
	if len(ep.Ports) > 0 {
		errs = append(errs, d.RemovePorts(ctx, ep, ep.Ports))
	}
	if err := stopped(ctx, "removing veth "+ep.HostVeth); err != nil {
		errs = append(errs, err)
		return fmt.Errorf("delete endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(ep.NetworkID), errors.Join(errs...))
	}
	errs = append(errs, d.RemoveSpoofCheck(ep))
	// The veth goes after the answer: deleting a netdev waits for an RCU
	// grace period (about 20 ms), which the built-in driver does not pay on
	// this path either (its veth goes with the sandbox's namespace). It is
	// queued by index: the same endpoint ID may come back before the
	// janitor runs, with a new veth of the same name. A crash before the
	// janitor runs leaves a tagged orphan for the reconcile. See reap.go
	// for how deletions are batched.
	if err := d.queueVeth(ep); err != nil {
		errs = append(errs, err)
	}
	d.forgetAddresses(ep)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(ep.NetworkID), err)
	}
	return nil
}

// EnsurePorts publishes the endpoint's ports. On error, the rules (and
// chains) this call added are removed again, and only those: the reconcile
// calls it to repair ports that are live. RemovePorts undoes it.
func (d *Dataplane) EnsurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping) (retErr error) {
	if n.Internal && len(ports) > 0 {
		return fmt.Errorf("network %s is internal: it cannot publish ports", model.Short(n.ID))
	}
	log := d.log.With("network_id", model.Short(n.ID), "endpoint_id", model.Short(ep.ID))
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, log); cerr != nil {
			retErr = fmt.Errorf("%w (rollback incomplete: %w)", retErr, cerr)
		}
	}()
	for _, fw := range d.firewalls() {
		if err := fw.ensurePorts(ctx, n, ep, ports, &undo); err != nil {
			return err
		}
	}
	return failpoint.Inject("bridge.ports")
}

// RemovePorts deletes the endpoint's port rules, found by their comment,
// and flushes conntrack entries of its UDP ports: a UDP "connection" to a
// port that is published again elsewhere would otherwise keep going to the
// old container.
func (d *Dataplane) RemovePorts(ctx context.Context, ep model.Endpoint, ports []model.PortMapping) error {
	if err := stopped(ctx, "removing the port rules of endpoint "+model.Short(ep.ID)); err != nil {
		return err
	}
	err := d.forAll(func(fw *firewall) error { return fw.removePorts(ep, ports) })
	for _, m := range ports {
		if m.Proto != "udp" {
			continue
		}
		var hostPorts []uint16
		for p := uint32(m.HostPort); p <= uint32(max(m.HostPortEnd, m.HostPort)); p++ {
			hostPorts = append(hostPorts, uint16(p))
		}
		d.later(func(h *netlink.Handle) { d.flushConntrack(h, []netip.Addr{m.ContainerIP}, hostPorts) })
	}
	return err
}

// EndpointExists reports whether the endpoint's host veth is present; after
// a reboot or a container's death it is not, and the endpoint is stale.
func (d *Dataplane) EndpointExists(ep model.Endpoint) (bool, error) {
	l, err := d.nl.LinkByName(ep.HostVeth)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	return l.Attrs().Alias == d.tag("ep", ep.ID), nil
}

// LiveEndpoints returns the IDs of the endpoints whose host veth exists
// with this instance's tag, from one link dump.
func (d *Dataplane) LiveEndpoints() (map[string]bool, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, l := range links {
		if kind, id, ok := d.parseTag(l.Attrs().Alias); ok && kind == "ep" {
			live[id] = true
		}
	}
	return live, nil
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
		if err := stopped(ctx, "removing orphaned link "+l.Attrs().Name); err != nil {
			return errors.Join(append(errs, err)...)
		}
		d.log.Info("removing orphaned link", "link", l.Attrs().Name, "kind", kind, "id", model.Short(id))
		if err := d.removeLink(l.Attrs().Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := stopped(ctx, "removing orphaned rules"); err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, d.forAll(func(fw *firewall) error { return fw.removeOrphans(networks, endpoints) }))
	// An empty table stays while networks do (see RemoveSpoofCheck).
	errs = append(errs, d.removeSpoofOrphans(endpoints, len(networks) == 0))
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

// stopped returns nil while ctx is live, else an error naming the step it
// stops before, which wraps ctx's cause (context.DeadlineExceeded, or the
// caller's own cause naming its request and deadline). Kernel calls cannot
// be interrupted, so each step checks before it starts; a context without
// a deadline never stops anything.
func stopped(ctx context.Context, step string) error {
	if ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("stopped before %s: %w", step, context.Cause(ctx))
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
