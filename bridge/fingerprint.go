package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
// The rules are read with one iptables-save per family and table rather
// than one `iptables -S` per chain: a fingerprint runs every few seconds,
// and with the nft backend each call loads the whole ruleset anyway. The
// output is only hashed, never parsed into decisions.
func (d *Dataplane) Fingerprint() (model.Digests, error) {
	g := digester{}
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	g.add("", "ip_forward "+sysctlValue("net/ipv4/ip_forward"))
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
			// bridgeSysctls' switches: no link dump carries them.
			for _, s := range []string{"net/ipv4/conf/%s/route_localnet", "net/ipv6/conf/%s/accept_ra", "net/ipv6/conf/%s/disable_ipv6"} {
				g.add(key, sysctlValue(fmt.Sprintf(s, a.Name)))
			}
		}
		var own []string
		for _, ad := range addrs {
			if ad.LinkIndex == a.Index && !ad.IP.IsLinkLocalUnicast() {
				own = append(own, ad.IPNet.String())
			}
		}
		slices.Sort(own)
		g.add(key, strings.Join(own, " "))
	}
	dockerIPT, iptRead := false, false
	for _, fw := range d.firewalls() {
		lines, err := fw.ownLines()
		if err != nil {
			return nil, err
		}
		_, isIPT := fw.(*iptablesFirewall)
		iptRead = iptRead || isIPT
		for _, l := range lines {
			key := ""
			switch {
			case strings.HasPrefix(l, "-A "+dockerIsolationStage1+" "), strings.HasPrefix(l, nftDockerBridgeLine):
				key = model.DigestDocker
			case isDockerChainLine(l):
				key = model.DigestFirewall
				dockerIPT = true
			}
			if nid, eid, ok := model.ParseRuleComment(l); ok {
				key = "net:" + nid
				if eid != "" {
					key = "ep:" + eid
				}
			}
			g.add(key, fw.family()+" "+l)
		}
	}
	d.seeDocker(g, dockerIPT, iptRead)
	return g.digests(), nil
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

// ownLines returns the lines of iptables-save that mention this instance's
// chains, in order, the declarations of the Docker chains that decide
// where its hooks and egress checks go (planHooks, planEgress): Docker
// started or restarted after mynet creates them, and of the chains that
// show Docker's iptables backend (for DigestFirewall), and the rules of the
// chain that names Docker's bridges (the LAN chain's returns): they change
// as Docker's networks come and go. One iptables-save of all tables, as
// the firewall's own read.
func (f *iptablesFirewall) ownLines() ([]string, error) {
	dockerChains := slices.Concat([]string{dockerUserChain}, dockerIsolationChains, dockerIPTablesChains)
	raw, err := f.ipt.Save()
	if err != nil {
		return nil, fmt.Errorf("read the %s rules: %w", f.family(), err)
	}
	prefix := strings.TrimSuffix(f.chains.Forward, "FORWARD")
	var out []string
	table := ""
	for _, l := range strings.Split(raw, "\n") {
		switch {
		case strings.HasPrefix(l, "#"):
			continue
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			// Chain lines carry packet counters: drop them.
			l, _, _ = strings.Cut(l, " ")
			if table == model.TableFilter && slices.Contains(dockerChains, l[1:]) {
				out = append(out, l)
				continue
			}
		}
		if strings.Contains(l, prefix) || table == model.TableFilter && strings.HasPrefix(l, "-A "+dockerIsolationStage1+" ") {
			out = append(out, l)
		}
	}
	return out, nil
}
