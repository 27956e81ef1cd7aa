package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/vishvananda/netlink"
)

// digester hashes lines per key.
type digester map[string][]string

func (g digester) add(key string, line string) { g[key] = append(g[key], line) }

func (g digester) digests() model.Digests {
	out := make(model.Digests, len(g))
	for k, lines := range g {
		sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
		out[k] = hex.EncodeToString(sum[:])
	}
	return out
}

// Fingerprint digests the links and iptables rules this instance owns:
// its links with their state, master and addresses, its bridges' switches
// that EnsureNetwork sets, every iptables line that mentions its chains,
// the presence of the Docker chains its hooks depend on, IPv4 forwarding,
// and where Docker's rules are (DigestFirewall; noted for FollowFirewall
// too). The anti-spoofing table has digests of its own,
// SpoofFingerprint, because repairing it costs a netlink transaction per
// endpoint. Equal digests mean nobody touched the object in between, which
// lets the periodic reconcile skip its repair; so whatever the repair
// restores must be in here.
//
// It runs every few seconds, so it reads only what may have changed: the
// links and addresses when the link watch (linkwatch.go) saw an event,
// the rules when the ruleset generation moved (iptables_cache.go, and the
// nftables backend's own), the sysctls every time (no event tells their
// changes). With nothing changed it costs a few system calls and the
// sysctl reads, and hashes nothing again.
func (d *Dataplane) Fingerprint() (model.Digests, error) {
	d.fpMu.Lock()
	defer d.fpMu.Unlock()
	c := &d.fp
	changed := false
	if c.links == nil || !d.links.clean() {
		c.links = nil // until a dump succeeds: the watch's mark is spent
		c.dumps++
		links, bridges, err := d.linkLines()
		if err != nil {
			return nil, err
		}
		c.links, c.bridges, changed = links, bridges, true
	}
	if sys := c.bridgeSysctls(); !slices.Equal(sys, c.sysctls) {
		c.sysctls, changed = sys, true
	}
	fws := d.firewalls()
	if len(c.fw) != len(fws) {
		c.fw, changed = make([]fwLines, len(fws)), true
	}
	dockerIPT, iptRead := false, false
	for i, fw := range fws {
		lines, err := fw.ownLines()
		if err != nil {
			return nil, err
		}
		if c.fw[i].groups == nil || !sameSlice(lines, c.fw[i].lines) {
			c.fw[i], changed = groupLines(fw.family(), lines), true
		}
		_, isIPT := fw.(*iptablesFirewall)
		iptRead = iptRead || isIPT
		dockerIPT = dockerIPT || c.fw[i].dockerIPT
	}
	if seen := d.seeDocker(dockerIPT, iptRead); seen != c.docker {
		c.docker, changed = seen, true
	}
	if changed || c.out == nil {
		c.out = c.combine().digests()
	}
	return maps.Clone(c.out), nil
}

// fpParts is what the last Fingerprint computed, by part, so that the
// next one recomputes only the parts that changed.
type fpParts struct {
	links   digester // per link key: the link and its addresses
	bridges []fpBridge
	sysctls []string // ip_forward, then one line per bridge
	fw      []fwLines
	docker  dockerSeen
	out     model.Digests
	dumps   int // link dumps, for tests and benchmarks
	files   sysctlFiles
}

// reads counts what the Dataplane has read of the kernel's links and
// rulesets for fingerprints and operations so far (link dumps, listings
// of the nftables tables, iptables-save runs, reads of its nftables
// tables), for the tests and benchmarks that check that a pass with
// nothing changed reads nothing. The firewalls' counts are lost when
// FollowFirewall replaces them.
func (d *Dataplane) reads() int {
	d.fpMu.Lock()
	n := d.fp.dumps + d.nftSeen.listings
	d.fpMu.Unlock()
	for _, fw := range d.firewalls() {
		switch f := fw.(type) {
		case *iptablesFirewall:
			f.mu.Lock()
			n += f.reads
			f.mu.Unlock()
		case *nftFirewall:
			f.mu.Lock()
			n += f.reads
			f.mu.Unlock()
		}
	}
	if f, ok := d.spoof.(*nftFilter); ok {
		f.mu.Lock()
		n += f.reads
		f.mu.Unlock()
	}
	return n
}

// fpBridge is a network's bridge, whose sysctls go under its key.
type fpBridge struct{ key, name string }

// fwLines are a firewall's ownLines as last read and grouped by key.
type fwLines struct {
	lines     []string
	groups    digester
	dockerIPT bool // Docker's iptables chains are declared
}

// sameSlice reports whether a and b are the same lines by identity: the
// firewalls return the slice they cached while nothing changed, and a new
// one otherwise (which may hold the same lines: that costs a regrouping).
func sameSlice(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (c *fpParts) combine() digester {
	g := digester{"": {c.sysctls[0]}}
	for k, lines := range c.links {
		g[k] = slices.Clone(lines)
	}
	for i, b := range c.bridges {
		g.add(b.key, c.sysctls[1+i])
	}
	for _, fw := range c.fw {
		for k, lines := range fw.groups {
			g[k] = append(g[k], lines...)
		}
	}
	g.add(model.DigestFirewall, fmt.Sprintf("docker nftables table %v (read %v)", c.docker.nft, c.docker.nftWorks))
	return g
}

// linkLines dumps the links and addresses: one line per link this
// instance tagged, one with its addresses.
func (d *Dataplane) linkLines() (digester, []fpBridge, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, nil, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses: %w", err)
	}
	byIndex := map[int][]string{}
	for _, ad := range addrs {
		if !ad.IP.IsLinkLocalUnicast() {
			byIndex[ad.LinkIndex] = append(byIndex[ad.LinkIndex], ad.IPNet.String())
		}
	}
	g := digester{}
	var bridges []fpBridge
	for _, l := range links {
		a := l.Attrs()
		kind, id, ok := d.parseTag(a.Alias)
		if !ok {
			continue
		}
		key := kind + ":" + id
		// Without the carrier (FlagRunning): it comes up when the engine
		// plugs the other end into a container, which is not a change to
		// repair, and a pass that saw it down would take the next one for
		// outside damage. With the index: a bridge deleted and created
		// again under its name from outside lacks what mynet set on it.
		g.add(key, fmt.Sprintf("%d %s %s %d %d %v", a.Index, a.Name, a.Alias, a.MTU, a.MasterIndex, a.Flags&^net.FlagRunning))
		if kind == "net" {
			bridges = append(bridges, fpBridge{key, a.Name})
		}
		own := byIndex[a.Index]
		slices.Sort(own)
		g.add(key, strings.Join(own, " "))
	}
	return g, bridges, nil
}

// bridgeSysctls are IPv4 forwarding and bridgeSysctls' switches of each
// bridge, which no netlink event announces: read every time.
func (c *fpParts) bridgeSysctls() []string {
	defer c.files.sweep()
	out := []string{"ip_forward " + c.files.value("net/ipv4/ip_forward")}
	for _, b := range c.bridges {
		out = append(out, c.files.value("net/ipv4/conf/"+b.name+"/route_localnet")+" "+
			c.files.value("net/ipv6/conf/"+b.name+"/accept_ra")+" "+
			c.files.value("net/ipv6/conf/"+b.name+"/disable_ipv6"))
	}
	return out
}

// groupLines keys a firewall's lines: by the network or endpoint their
// comment names, Docker's bridges and chains apart, the rest under "".
func groupLines(family string, lines []string) fwLines {
	fl := fwLines{lines: lines, groups: digester{}}
	for _, l := range lines {
		key := ""
		switch {
		case strings.HasPrefix(l, "-A "+dockerIsolationStage1+" "), strings.HasPrefix(l, nftDockerBridgeLine):
			key = model.DigestDocker
		case isDockerChainLine(l):
			key = model.DigestFirewall
			fl.dockerIPT = true
		}
		if nid, eid, ok := model.ParseRuleComment(l); ok {
			key = "net:" + nid
			if eid != "" {
				key = "ep:" + eid
			}
		}
		fl.groups.add(key, family+" "+l)
	}
	return fl
}

// sysctlValue is a sysctl's value for a fingerprint, or "-" when it cannot
// be read (IPv6 disabled, for one).
func sysctlValue(key string) string {
	v, err := readSysctl(key)
	if err != nil {
		return "-"
	}
	return v
}

// ownLines returns the lines of the ruleset that mention this instance's
// chains ("-A CHAIN SPEC", chains in name order, rules in their order),
// the declarations (":CHAIN") of the Docker chains that decide where its
// hooks and egress checks go (planHooks, planEgress): Docker started or
// restarted after mynet creates them, and of the chains that show
// Docker's iptables backend (for DigestFirewall), and the rules of the
// chain that names Docker's bridges (the LAN chain's returns): they change
// as Docker's networks come and go. From the cached read (iptables_cache.go),
// so that a periodic fingerprint with nothing changed runs no
// iptables-save; the lines are computed once per read or write.
func (f *iptablesFirewall) ownLines() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.cached()
	if err != nil {
		return nil, err
	}
	if c.lines == nil {
		c.lines = f.linesOf(c.rs)
	}
	return c.lines, nil
}

func (f *iptablesFirewall) linesOf(rs ruleset) []string {
	dockerChains := slices.Concat([]string{dockerUserChain}, dockerIsolationChains, dockerIPTablesChains)
	prefix := strings.TrimSuffix(f.chains.Forward, "FORWARD")
	out := []string{}
	for _, table := range slices.Sorted(maps.Keys(rs)) {
		t := rs[table]
		chains := slices.Sorted(maps.Keys(t.chains))
		for _, chain := range chains {
			if strings.Contains(chain, prefix) || table == model.TableFilter && slices.Contains(dockerChains, chain) {
				out = append(out, ":"+chain)
			}
		}
		for _, chain := range chains {
			stage1 := table == model.TableFilter && chain == dockerIsolationStage1
			for _, spec := range t.chains[chain] {
				if l := "-A " + chain + " " + spec; stage1 || strings.Contains(l, prefix) {
					out = append(out, l)
				}
			}
		}
	}
	return out
}
