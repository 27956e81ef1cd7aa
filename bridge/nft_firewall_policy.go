package bridge

// The nftables backend's per-network policy and port elements: the same
// policy per gateway mode as the iptables backend's (iptables_rules.go:
// networkRules, directRoutingRules, routedRules, portRules), in the
// layout nft_firewall.go describes.

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// dockerBridgeNames are Docker's default bridge names as nft wildcards;
// bridges named otherwise (com.docker.network.bridge.name) are known from
// Docker 29's own table (the docker-bridges set) or not at all, as under
// iptables from DOCKER-ISOLATION-STAGE-1.
var dockerBridgeNames = []string{"docker0", "br-*"}

// networkObjects are a network's chains and the elements that lead into
// them, for one family; none when the network has no subnet of it (an
// IPv6-only network has nothing in the ip table, an IPv4-only one nothing
// in ip6).
//
//	in (forward, out through the bridge): see inRules.
//	out (forward, in from the bridge, to an interface that is no mynet
//	   bridge): internal networks drop all; else replies accepted, new
//	   connections into Docker's bridges dropped, the rest accepted.
//	nat-out / nat-in (postrouting): masquerade of egress, and of the
//	   host's loopback sources reaching a published port (IPv4); neither
//	   in gateway mode routed, where nothing is translated.
//	direct (prerouting, for packets routed to the bridge): see
//	   directRules; in gateway mode nat only.
func (o nftObjs) networkObjects(n model.Network) (chains []nftNetChain, elems []nftElem) {
	subnets := n.Subnets(o.v6)
	if len(subnets) == 0 {
		return nil, nil
	}
	br, c := n.Bridge, model.RuleComment(n.ID, "")
	chain := func(kind string, rules ...*nftRule) {
		name := model.NFTNetworkChain(n.ID, kind)
		chains = append(chains, nftNetChain{name: name, rules: rules})
		set := map[string]string{model.NFTChainIn: nsInJumps, model.NFTChainOut: nsOutJumps, model.NFTChainNATOut: nsNATOutJumps,
			model.NFTChainNATIn: nsNATInJumps, model.NFTChainDirect: nsDirectJumps}[kind]
		elems = append(elems, nftElem{set: set, key: spoofIfnameKey(br), jump: name, comment: c, text: fmt.Sprintf("%q : jump %s", br, name)})
	}
	elems = append(elems, nftElem{set: nsBridges, key: spoofIfnameKey(br), comment: c, text: strconv.Quote(br)})
	chain(model.NFTChainIn, o.inRules(n, subnets)...)
	if n.Internal {
		chain(model.NFTChainOut, rule1().verdict(expr.VerdictDrop, ""))
		return chains, elems
	}
	out := []*nftRule{rule1().ctState(false).verdict(expr.VerdictAccept, "")}
	out = append(out, rule1().add("", nrMeta(expr.MetaKeyOIFNAME, nrReg32)).lookup(o, "oifname @"+nsDockerBridges, nsDockerBridges, false).verdict(expr.VerdictDrop, ""))
	for _, d := range dockerBridgeNames {
		out = append(out, rule1().ifname(true, false, d).verdict(expr.VerdictDrop, ""))
	}
	chain(model.NFTChainOut, append(out, rule1().verdict(expr.VerdictAccept, ""))...)
	if n.Routed(o.v6) {
		return chains, elems
	}
	if n.Masquerade {
		var masq []*nftRule
		for _, s := range subnets {
			masq = append(masq, rule1().ifname(true, true, br).addr(o, false, s.Pool).add("masquerade", &expr.Masq{}))
		}
		chain(model.NFTChainNATOut, masq...)
	}
	if !o.v6 {
		chain(model.NFTChainNATIn, rule1().addr(o, false, netip.MustParsePrefix("127.0.0.0/8")).add("masquerade", &expr.Masq{}))
	}
	if !n.Unprotected(o.v6) {
		chain(model.NFTChainDirect, o.directRules(n, subnets)...)
	}
	return chains, elems
}

// inRules are the network's in-chain: replies accepted; inside the
// bridge accepted with ICC, else dropped; then what each gateway mode
// lets in from outside the bridge, and a drop of the rest.
//
//	nat:             the trusted interfaces' connections to published
//	                 container ports (the published set), as Docker's
//	                 port accept lets them in; translated connections to
//	                 published ports are accepted in the forward chain.
//	nat-unprotected: new connections to the subnet from outside every
//	                 bridge, mynet's and Docker's.
//	routed:          ICMP, and the routed set's container ports, from
//	                 anywhere outside the bridge (the LAN, other networks'
//	                 containers), as Docker's setICMP and
//	                 setPerPortForwarding accept them.
//
// Internal networks let nothing in from outside.
func (o nftObjs) inRules(n model.Network, subnets []model.Subnet) []*nftRule {
	br := n.Bridge
	in := []*nftRule{rule1().ctState(false).verdict(expr.VerdictAccept, "")}
	if n.ICC {
		in = append(in, rule1().ifname(false, false, br).verdict(expr.VerdictAccept, ""))
	} else {
		in = append(in, rule1().ifname(false, false, br).verdict(expr.VerdictDrop, ""))
	}
	drop := rule1().verdict(expr.VerdictDrop, "")
	switch {
	case n.Internal:
		return append(in, drop)
	case n.Routed(o.v6):
		proto, text := byte(unix.IPPROTO_ICMP), "meta l4proto icmp"
		if o.v6 {
			proto, text = unix.IPPROTO_ICMPV6, "meta l4proto ipv6-icmp"
		}
		in = append(in, rule1().add(text, nrMeta(expr.MetaKeyL4PROTO, nrReg1), nrCmp(expr.CmpOpEq, []byte{proto})).verdict(expr.VerdictAccept, ""),
			rule1().ctrPort(o, nsRouted).verdict(expr.VerdictAccept, ""))
		return append(in, drop)
	case n.Unprotected(o.v6):
		for _, s := range subnets {
			r := rule1().addr(o, true, s.Pool)
			r.add("", nrMeta(expr.MetaKeyIIFNAME, nrReg32)).lookup(o, "iifname != @"+nsBridges, nsBridges, true).
				lookup(o, "iifname != @"+nsDockerBridges, nsDockerBridges, true)
			for _, d := range dockerBridgeNames {
				r.ifname(false, true, d)
			}
			in = append(in, r.verdict(expr.VerdictAccept, ""))
		}
	}
	for _, ti := range n.TrustedInterfaces {
		in = append(in, rule1().ifname(false, false, nftIfname(ti)).ctrPort(o, nsPublished).verdict(expr.VerdictAccept, ""))
	}
	return append(in, drop)
}

// directRules protect gateway mode nat from direct routing: new
// connections from outside the bridge to the subnet are dropped before
// DNAT, the gateway (the host's own address) and the trusted interfaces
// excepted (Docker's raw-table accepts, moby v28.5.2
// iptabler/endpoint.go, filterDirectAccess).
func (o nftObjs) directRules(n model.Network, subnets []model.Subnet) []*nftRule {
	direct := []*nftRule{rule1().ifname(false, false, n.Bridge).verdict(expr.VerdictReturn, ""), rule1().ctState(false).verdict(expr.VerdictReturn, "")}
	for _, s := range subnets {
		if s.Gateway.IsValid() {
			direct = append(direct, rule1().addr(o, true, netip.PrefixFrom(s.Gateway.Addr(), s.Gateway.Addr().BitLen())).verdict(expr.VerdictReturn, ""))
		}
	}
	for _, s := range subnets {
		for _, ti := range n.TrustedInterfaces {
			direct = append(direct, rule1().ifname(false, false, nftIfname(ti)).addr(o, true, s.Pool).verdict(expr.VerdictReturn, ""))
		}
	}
	for _, s := range subnets {
		direct = append(direct, rule1().addr(o, true, s.Pool).verdict(expr.VerdictDrop, ""))
	}
	return direct
}

// nftIfname is a trusted interface as nft matches it: iptables' wildcard
// "eth+" is nft's "eth*".
func nftIfname(name string) string {
	if p, ok := strings.CutSuffix(name, "+"); ok {
		return p + "*"
	}
	return name
}

var nftProtoNums = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

// portElems are an endpoint's published ports as map elements, one per
// host port: a port is an element, not a rule. A routed mapping (no host
// port) is one element of the routed set: its container port, open at the
// container's address, with no DNAT.
func (o nftObjs) portElems(ep model.Endpoint, ports []model.PortMapping) []nftElem {
	c := model.RuleComment(ep.NetworkID, ep.ID)
	var out []nftElem
	for _, m := range ports {
		if m.ContainerIP.Is6() != o.v6 || (m.HostIP.IsValid() && m.HostIP.Is6() != o.v6) {
			continue
		}
		proto, ok := nftProtoNums[m.Proto]
		if !ok {
			continue
		}
		if m.Routed() {
			e := nftPublishedElem(m.ContainerIP, proto, m.Proto, m.Port, c)
			e.set = nsRouted
			out = append(out, e)
			continue
		}
		last := max(m.HostPortEnd, m.HostPort)
		for hp := uint32(m.HostPort); hp <= uint32(last); hp++ {
			cp := uint16(uint32(m.Port) + hp - uint32(m.HostPort))
			val := append(m.ContainerIP.AsSlice(), nftPortBytes(cp)...)
			vtext := fmt.Sprintf("%s . %d", m.ContainerIP, cp)
			key := []byte{proto, 0, 0, 0}
			set, ktext := nsPortsAny, fmt.Sprintf("%s . %d", m.Proto, hp)
			if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
				key = append(key, m.HostIP.AsSlice()...)
				set, ktext = nsPortsAddr, fmt.Sprintf("%s . %s . %d", m.Proto, m.HostIP, hp)
			}
			key = append(key, nftPortBytes(uint16(hp))...)
			out = append(out, nftElem{set: set, key: key, val: val, comment: c, text: ktext + " : " + vtext},
				nftPublishedElem(m.ContainerIP, proto, m.Proto, cp, c))
		}
	}
	return out
}

// dockerBridgePrefix starts the name of Docker 29's per-bridge chain in
// its docker-bridges tables (moby nftabler: "filter-forward-in__" + the
// bridge's name), which names every Docker bridge, renamed ones too.
const dockerBridgePrefix = "filter-forward-in__"

// dockerBridgeElems are the docker-bridges set's elements for Docker's
// bridges as its table names them.
func dockerBridgeElems(names []string) []nftElem {
	var out []nftElem
	for _, name := range names {
		if model.ValidateIfName(name) != nil {
			continue
		}
		out = append(out, nftElem{set: nsDockerBridges, key: spoofIfnameKey(name), text: strconv.Quote(name)})
	}
	return out
}
