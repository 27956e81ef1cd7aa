package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/google/nftables"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
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
	// Firewall is the backend of the rules: model.FirewallIPTables ("" too)
	// or model.FirewallNFTables (nft_firewall.go), which uses neither
	// binary nor IPv4 and IPv6.
	Firewall string
	// Follow lets FollowFirewall move the rules to the backend Docker's
	// rules are in (serve --firewall auto); the iptables one then uses the
	// binaries on PATH, not IPv4 and IPv6.
	Follow bool
}

// Dataplane builds networks and endpoints in one network namespace.
type Dataplane struct {
	instance string
	log      *slog.Logger
	nl       *netlink.Handle
	// rtnl sends the requests the netlink package has no call for: link
	// creation with NLM_F_ECHO (link.go).
	rtnl     *vnl.SocketHandle
	fw4, fw6 firewall // fw6 is nil without ip6tables
	// follow, nftList, seen and leftover are FollowFirewall's
	// (firewall_follow.go): nftList lists the tables in this namespace
	// (nil if it could not be opened), seen is what the last Fingerprint
	// saw of Docker's rules, leftover the firewalls a switch left rules in.
	follow   bool
	nftList  *nftables.Conn
	seenMu   sync.Mutex
	seen     dockerSeen
	leftover []firewall

	generation string // in the link tags, see Tag
	// gen is the namespace's nftables ruleset generation (rulegen.go).
	gen *rulesetGen
	// links watches link and address events; fpMu guards fp, the last
	// Fingerprint by part, and nftSeen (fingerprint.go).
	links   *linkWatch
	fpMu    sync.Mutex
	fp      fpParts
	nftSeen nftListing
	// dockerIPT is FollowFirewall's last look for Docker's iptables
	// chains (firewall_follow.go), under fpMu.
	dockerIPT dockerIPTables

	// janitor runs best-effort cleanups (conntrack and neighbour flushes,
	// which cost a full conntrack dump each) after the request has been
	// answered, on a netlink handle of its own.
	janitor     chan func(*netlink.Handle)
	janitorDone chan struct{}
	spoof       spoofFilter       // the anti-spoofing filter (spoof.go)
	reaper      *reaper           // veths waiting for deletion (reap.go)
	forgetQueue batch[forgetItem] // addresses waiting for forgetQueued
	forgetMu    sync.Mutex
	forgetting  map[netip.Addr]int // queued or running flushes, by address
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
		janitor: make(chan func(*netlink.Handle), 256), janitorDone: make(chan struct{}), follow: cfg.Follow,
		gen: newRulesetGen(), links: newLinkWatch(cfg.Log)}
	if c, err := nftables.New(nftables.AsLasting()); err == nil {
		d.nftList = c
	}
	d.spoof = newNFTFilter(model.SpoofTableName(cfg.Instance), d.gen, cfg.Log)
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
	switch cfg.Firewall {
	case model.FirewallNFTables:
		d.fw4, d.fw6 = newNFTFirewall(cfg.Instance, false, cfg.Log), newNFTFirewall(cfg.Instance, true, cfg.Log)
		return d, nil
	case "", model.FirewallIPTables:
	default:
		d.Close()
		return nil, fmt.Errorf("unknown firewall backend %q: use %s or %s", cfg.Firewall, model.FirewallIPTables, model.FirewallNFTables)
	}
	ipt4 := cfg.IPv4
	if ipt4 == nil {
		var err error
		if ipt4, err = newIPTables(false); err != nil {
			d.Close() // its goroutines and sockets
			return nil, err
		}
	}
	d.fw4 = newIPTablesFirewall(cfg.Instance, ipt4, false, d.gen, cfg.Log)
	ipt6 := cfg.IPv6
	if ipt6 == nil {
		var err error
		if ipt6, err = newIPTables(true); err != nil {
			cfg.Log.Warn("ip6tables unavailable: networks with IPv6 will be refused", "err", err)
		}
	}
	if ipt6 != nil {
		d.fw6 = newIPTablesFirewall(cfg.Instance, ipt6, true, d.gen, cfg.Log)
	}
	return d, nil
}

// Close finishes queued cleanups and releases the netlink handles and
// sockets.
func (d *Dataplane) Close() {
	close(d.janitor)
	<-d.janitorDone
	d.nl.Close()
	d.rtnl.Close()
	d.spoof.close()
	closeFirewalls(append([]firewall{d.fw4, d.fw6}, d.leftover...)...)
	if d.nftList != nil {
		d.nftList.CloseLasting()
	}
	d.reaper.close()
	d.gen.close()
	d.links.close()
	d.fpMu.Lock()
	d.fp.files.close()
	d.fpMu.Unlock()
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
func (d *Dataplane) Chains() []string { return model.ChainsFor(d.instance).All() }

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
