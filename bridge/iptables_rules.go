package bridge

// The iptables rules of a network and of a published port, one family at
// a time.

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/mynet/mynet/internal/model"
)

// rule is one iptables rule, defined once and used for both adding and
// deleting. top rules are inserted at the head of their chain, the rest
// appended.
type rule struct {
	table, chain string
	args         []string
	top          bool
}

func (r rule) String() string { return r.table + " " + r.chain + " " + strings.Join(r.args, " ") }

// networkRules is the whole per-network policy of one family; it is empty
// when the network has no subnet of the family. Drops live in the
// isolation chain, which is evaluated before any accept, so the order of
// rules only matters for the port accepts, which are inserted at its top.
//
//	isolation: new connections into the bridge from any other interface
//	           are dropped (other mynet networks, Docker's bridges, the
//	           outside); so is traffic between its containers without ICC,
//	           and all egress of an internal network;
//	forward:   replies into the bridge, traffic inside it (with ICC) and
//	           egress (checked against Docker's bridges first) are accepted;
//	nat:       egress is masqueraded to the host's address, and connections
//	           from the host's loopback to a published port get the
//	           bridge's address, so replies find their way back; neither
//	           in gateway mode routed, where nothing is translated.
func (f *iptablesFirewall) networkRules(n model.Network) []rule {
	subnets := n.Subnets(f.v6)
	if len(subnets) == 0 {
		return nil
	}
	c, br := comment(model.RuleComment(n.ID, "")), n.Bridge
	notReply := []string{"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"}
	rules := []rule{
		{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"!", "-i", br, "-o", br}, notReply, c, []string{"-j", "DROP"})},
		{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, c, []string{"-j", "ACCEPT"})},
	}
	if n.ICC {
		rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-i", br, "-o", br}, c, []string{"-j", "ACCEPT"})})
	} else {
		rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"-i", br, "-o", br}, notReply, c, []string{"-j", "DROP"})})
	}
	if n.Internal {
		return append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"-i", br, "!", "-o", br}, c, []string{"-j", "DROP"})})
	}
	rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-i", br, "!", "-o", br}, c, []string{"-j", f.chains.Egress})})
	rules = append(rules, rule{table: model.TableFilter, chain: f.chains.LAN, top: true, args: concat([]string{"-i", br}, c, []string{"-j", "RETURN"})})
	rules = append(rules, f.directRoutingRules(n, subnets, c)...)
	if n.Routed(f.v6) {
		return append(rules, f.routedRules(n, c)...)
	}
	if n.Masquerade {
		for _, s := range subnets {
			rules = append(rules, rule{table: model.TableNAT, chain: f.chains.Postrouting, args: concat([]string{"-s", s.Pool.String(), "!", "-o", br}, c, []string{"-j", "MASQUERADE"})})
		}
	}
	if !f.v6 {
		rules = append(rules, rule{table: model.TableNAT, chain: f.chains.Postrouting, args: concat([]string{"-s", "127.0.0.0/8", "-o", br}, c, []string{"-j", "MASQUERADE"})})
	}
	return rules
}

// routedRules are gateway mode routed's own, besides its port rules: ICMP
// into the bridge is accepted from anywhere, as Docker's bridge accepts it
// (moby v28.5.2 iptabler/network.go, setICMP: "Allow ICMP in routed
// mode"), so the containers answer pings and path MTU discovery works. One
// difference: Docker's rule matches traffic inside the bridge too, and so
// lets ICMP between containers through with enable_icc=false; mynet's
// leaves ICC to the ICC rules.
func (f *iptablesFirewall) routedRules(n model.Network, c []string) []rule {
	icmp := "icmp"
	if f.v6 {
		icmp = "ipv6-icmp"
	}
	return []rule{{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"!", "-i", n.Bridge, "-o", n.Bridge, "-p", icmp}, c, []string{"-j", "ACCEPT"})}}
}

// directRoutingRules decide whether a host on the LAN, with a route to the
// network's subnet via this host, may reach the containers' addresses.
//
//	nat:             no. New connections to the subnet that did not come
//	                 in on the bridge are dropped in the mangle table,
//	                 before DNAT and before any filter rule (an operator's
//	                 ACCEPT in DOCKER-USER or FORWARD) could let them in,
//	                 so published ports stay reachable through the host's
//	                 addresses only. The gateway is the host's own address
//	                 and stays reachable, as without the bridge.
//	nat-unprotected: yes, all ports, as Docker's bridge driver allows: new
//	                 connections into the bridge from outside it go to
//	                 the LAN chain ahead of the isolation drop, which
//	                 accepts them unless they come from a bridge, of
//	                 mynet (each network's return) or of Docker.
//	routed:          the published container ports (portRules) and ICMP
//	                 (routedRules), from anywhere; nothing here.
//
// Trusted interfaces (trusted_host_interfaces) get past the nat drop, as
// Docker's raw-table accepts let them (moby v28.5.2 iptabler/endpoint.go,
// filterDirectAccess); their port accepts (portRules) then open the
// published container ports to them, and the isolation drop the rest. In
// the other modes Docker adds nothing for them, nor does mynet: published
// ports are open to everyone there already.
//
// Docker 28 drops in the raw table, one rule per container address, which
// also drops the replies of the containers' own connections when
// enable_ip_masquerade is false: they come back addressed to the container
// from outside the bridge. mynet's drop spares replies (conntrack has seen
// the packet by mangle), and covers the subnet, so it is a network rule
// that needs no endpoint.
func (f *iptablesFirewall) directRoutingRules(n model.Network, subnets []model.Subnet, c []string) []rule {
	var rules []rule
	if n.Routed(f.v6) {
		return nil
	}
	for _, s := range subnets {
		pool := s.Pool.String()
		if n.Unprotected(f.v6) {
			rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"-d", pool, "!", "-i", n.Bridge, "-o", n.Bridge}, c, []string{"-j", f.chains.LAN})})
			continue
		}
		if s.Gateway.IsValid() {
			gw := netip.PrefixFrom(s.Gateway.Addr(), s.Gateway.Addr().BitLen()).String()
			rules = append(rules, rule{table: model.TableMangle, chain: f.chains.Direct, top: true, args: concat([]string{"-d", gw}, c, []string{"-j", "RETURN"})})
		}
		for _, in := range n.TrustedInterfaces {
			rules = append(rules, rule{table: model.TableMangle, chain: f.chains.Direct, top: true, args: concat([]string{"-d", pool, "-i", in}, c, []string{"-j", "RETURN"})})
		}
		notReply := []string{"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"}
		rules = append(rules, rule{table: model.TableMangle, chain: f.chains.Direct, args: concat([]string{"-d", pool, "!", "-i", n.Bridge}, notReply, c, []string{"-j", "DROP"})})
	}
	return rules
}

// portRules publishes one mapping: DNAT from the host's addresses (the
// jump into the DNAT chain matches local destinations only) and an accept
// for the translated connections only, ahead of the isolation drops, so a
// published port does not open the container to direct connections;
// except from the network's trusted interfaces, which get an accept of
// the container port each, as Docker's port accept lets their traffic in
// (it is not limited to translated connections: Docker relies on its raw
// drop, which trusted interfaces pass).
//
// A routed mapping (HostPort 0) has no DNAT: the container port is open
// at the container's address to anyone outside the bridge, the other
// networks' containers included, as with Docker's bridge (moby v28.5.2
// iptabler/port.go: setPerPortNAT does nothing without a host port,
// setPerPortForwarding accepts `! -i br -o br -d ctr --dport P`; and in
// network.go, setINC lets anything into a routed network's bridge).
func (f *iptablesFirewall) portRules(ep model.Endpoint, m model.PortMapping) []rule {
	if m.ContainerIP.Is6() != f.v6 || (m.HostIP.IsValid() && m.HostIP.Is6() != f.v6) {
		return nil
	}
	c := comment(model.RuleComment(ep.NetworkID, ep.ID))
	proto := []string{"-p", m.Proto, "-m", m.Proto}
	ctr := netip.PrefixFrom(m.ContainerIP, m.ContainerIP.BitLen()).String()
	if m.Routed() {
		port := strconv.Itoa(int(m.Port))
		return []rule{{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"-d", ctr, "!", "-i", ep.Bridge, "-o", ep.Bridge}, proto, []string{"--dport", port}, c, []string{"-j", "ACCEPT"})}}
	}
	hostPorts, ctrPorts := portSpec(m.HostPort, m.HostPortEnd, ":"), portSpec(m.Port, m.Port+(m.HostPortEnd-m.HostPort), "-")
	var dst []string
	if m.HostIP.IsValid() {
		dst = []string{"-d", netip.PrefixFrom(m.HostIP, m.HostIP.BitLen()).String()}
	}
	to := m.ContainerIP.String() + ":" + ctrPorts
	if f.v6 {
		to = "[" + m.ContainerIP.String() + "]:" + ctrPorts
	}
	dport := []string{"--dport", strings.ReplaceAll(ctrPorts, "-", ":")}
	rules := []rule{
		{table: model.TableNAT, chain: f.chains.DNAT, args: concat(dst, proto, []string{"--dport", hostPorts}, c, []string{"-j", "DNAT", "--to-destination", to})},
		{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"-d", ctr, "-o", ep.Bridge}, proto, dport, []string{"-m", "conntrack", "--ctstate", "DNAT"}, c, []string{"-j", "ACCEPT"})},
	}
	for _, in := range ep.TrustedInterfaces {
		rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"-d", ctr, "-i", in, "-o", ep.Bridge}, proto, dport, c, []string{"-j", "ACCEPT"})})
	}
	return rules
}

func portSpec(first, last uint16, sep string) string {
	if last <= first {
		return strconv.Itoa(int(first))
	}
	return strconv.Itoa(int(first)) + sep + strconv.Itoa(int(last))
}

func (f *iptablesFirewall) allPortRules(ep model.Endpoint, ports []model.PortMapping) []rule {
	var rules []rule
	for _, m := range ports {
		rules = append(rules, f.portRules(ep, m)...)
	}
	return rules
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// comment is the match that carries a rule's comment.
func comment(text string) []string { return []string{"-m", "comment", "--comment", text} }
