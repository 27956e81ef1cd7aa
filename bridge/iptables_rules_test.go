package bridge

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// rendered is a rule as "table chain args", without its comment, which
// every rule has and which names the network.
func rendered(rules []rule) []string {
	var out []string
	for _, r := range rules {
		args := slices.Clone(r.args)
		if i := slices.Index(args, "--comment"); i >= 2 {
			args = slices.Delete(args, i-2, i+2)
		}
		top := ""
		if r.top {
			top = "^"
		}
		out = append(out, top+r.table+" "+r.chain+" "+strings.Join(args, " "))
	}
	return out
}

func ruleNetwork() model.Network {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	n.Bridge = "br0"
	n.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
	return n
}

// TestNetworkRulesByGatewayMode: the per-family rules of each gateway mode,
// as Docker 28.5's bridge builds them (moby v28.5.2
// libnetwork/drivers/bridge/internal/iptabler, the gwm=routed goldens):
// routed has no masquerade and no direct-routing drop, and accepts ICMP
// into the bridge; the other family keeps its own mode; trusted interfaces
// pass the nat drop only.
func TestNetworkRulesByGatewayMode(t *testing.T) {
	masq4 := "nat MYNET-POSTROUTING -s 10.1.0.0/24 ! -o br0 -j MASQUERADE"
	masq6 := "nat MYNET-POSTROUTING -s fd00:1::/64 ! -o br0 -j MASQUERADE"
	loopMasq := "nat MYNET-POSTROUTING -s 127.0.0.0/8 -o br0 -j MASQUERADE"
	drop4 := "mangle MYNET-DIRECT -d 10.1.0.0/24 ! -i br0 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP"
	drop6 := "mangle MYNET-DIRECT -d fd00:1::/64 ! -i br0 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP"
	icmp4 := "^filter MYNET-ISOLATION ! -i br0 -o br0 -p icmp -j ACCEPT"
	icmp6 := "^filter MYNET-ISOLATION ! -i br0 -o br0 -p ipv6-icmp -j ACCEPT"
	lan4 := "^filter MYNET-ISOLATION -d 10.1.0.0/24 ! -i br0 -o br0 -j MYNET-LAN"
	trusted4 := "^mangle MYNET-DIRECT -d 10.1.0.0/24 -i eth3 -j RETURN"
	trusted6 := "^mangle MYNET-DIRECT -d fd00:1::/64 -i eth3 -j RETURN"
	for _, tc := range []struct {
		name     string
		modify   func(*model.Network)
		want     []string // present, by family: [v4, v6]
		wantNot  []string
		want6    []string
		wantNot6 []string
	}{
		{name: "nat", modify: func(*model.Network) {},
			want: []string{masq4, loopMasq, drop4}, wantNot: []string{icmp4},
			want6: []string{masq6, drop6}, wantNot6: []string{icmp6}},
		{name: "routed", modify: func(n *model.Network) { n.Routed4, n.Routed6 = true, true },
			want: []string{icmp4}, wantNot: []string{masq4, loopMasq, drop4, lan4},
			want6: []string{icmp6}, wantNot6: []string{masq6, drop6}},
		{name: "ipv4-nat-ipv6-routed", modify: func(n *model.Network) { n.Routed6 = true },
			want: []string{masq4, loopMasq, drop4}, wantNot: []string{icmp4},
			want6: []string{icmp6}, wantNot6: []string{masq6, drop6}},
		{name: "ipv4-routed-ipv6-nat-unprotected", modify: func(n *model.Network) { n.Routed4, n.Unprotected6 = true, true },
			want: []string{icmp4}, wantNot: []string{masq4, drop4},
			want6: []string{masq6, "^filter MYNET-ISOLATION -d fd00:1::/64 ! -i br0 -o br0 -j MYNET-LAN"}, wantNot6: []string{drop6, icmp6}},
		{name: "routed-masquerade-off", modify: func(n *model.Network) { n.Routed4, n.Masquerade = true, false },
			want: []string{icmp4}, wantNot: []string{masq4, drop4},
			wantNot6: []string{masq6, icmp6}, want6: []string{drop6}},
		{name: "routed-internal", modify: func(n *model.Network) { n.Routed4, n.Internal = true, true },
			want: []string{"filter MYNET-ISOLATION -i br0 ! -o br0 -j DROP"}, wantNot: []string{icmp4, masq4}},
		{name: "nat-trusted", modify: func(n *model.Network) { n.TrustedInterfaces = []string{"eth3"} },
			want: []string{drop4, trusted4}, want6: []string{drop6, trusted6}},
		{name: "routed-trusted", modify: func(n *model.Network) { n.Routed4, n.TrustedInterfaces = true, []string{"eth3"} },
			want: []string{icmp4}, wantNot: []string{trusted4}, want6: []string{trusted6}},
		{name: "nat-unprotected-trusted", modify: func(n *model.Network) { n.Unprotected4, n.TrustedInterfaces = true, []string{"eth3"} },
			want: []string{lan4, masq4}, wantNot: []string{trusted4, drop4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := ruleNetwork()
			tc.modify(&n)
			for _, fam := range []struct {
				v6        bool
				want, not []string
			}{{false, tc.want, tc.wantNot}, {true, tc.want6, tc.wantNot6}} {
				got := rendered(newIPTablesFirewall(model.DefaultInstance, nil, fam.v6, nil, slog.Default()).networkRules(n))
				for _, w := range fam.want {
					if !slices.Contains(got, w) {
						t.Errorf("v6=%v: no rule %q in:\n%s", fam.v6, w, strings.Join(got, "\n"))
					}
				}
				for _, w := range fam.not {
					if slices.Contains(got, w) {
						t.Errorf("v6=%v: unwanted rule %q in:\n%s", fam.v6, w, strings.Join(got, "\n"))
					}
				}
			}
		})
	}
}

// TestPortRulesByGatewayMode: a mapping with a host port is a DNAT and an
// accept of translated connections (and of the trusted interfaces'
// connections to the container port); a routed mapping (no host port) is
// one accept of the container port from outside the bridge, as Docker's
// setPerPortForwarding, and no DNAT.
func TestPortRulesByGatewayMode(t *testing.T) {
	n := ruleNetwork()
	ep := testEndpoint(n, eid1)
	c4, c6 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")
	for _, tc := range []struct {
		name    string
		v6      bool
		trusted []string
		m       model.PortMapping
		want    []string
	}{
		{name: "nat", m: model.PortMapping{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c4, Port: 80}, want: []string{
			"nat MYNET-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80",
			"^filter MYNET-ISOLATION -d 10.1.0.2/32 -o br0 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -j ACCEPT",
		}},
		{name: "nat-trusted", trusted: []string{"eth3", "vx+"}, m: model.PortMapping{Proto: "udp", HostPort: 5353, HostPortEnd: 5354, ContainerIP: c4, Port: 53}, want: []string{
			"nat MYNET-DNAT -p udp -m udp --dport 5353:5354 -j DNAT --to-destination 10.1.0.2:53-54",
			"^filter MYNET-ISOLATION -d 10.1.0.2/32 -o br0 -p udp -m udp --dport 53:54 -m conntrack --ctstate DNAT -j ACCEPT",
			"^filter MYNET-ISOLATION -d 10.1.0.2/32 -i eth3 -o br0 -p udp -m udp --dport 53:54 -j ACCEPT",
			"^filter MYNET-ISOLATION -d 10.1.0.2/32 -i vx+ -o br0 -p udp -m udp --dport 53:54 -j ACCEPT",
		}},
		{name: "routed", m: model.PortMapping{Proto: "tcp", ContainerIP: c4, Port: 80}, want: []string{
			"^filter MYNET-ISOLATION -d 10.1.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 80 -j ACCEPT",
		}},
		{name: "routed-ipv6-trusted", v6: true, trusted: []string{"eth3"}, m: model.PortMapping{Proto: "sctp", ContainerIP: c6, Port: 9}, want: []string{
			"^filter MYNET-ISOLATION -d fd00:1::2/128 ! -i br0 -o br0 -p sctp -m sctp --dport 9 -j ACCEPT",
		}},
		{name: "other-family", v6: true, m: model.PortMapping{Proto: "tcp", ContainerIP: c4, Port: 80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ep
			e.Bridge, e.TrustedInterfaces = "br0", tc.trusted
			got := rendered(newIPTablesFirewall(model.DefaultInstance, nil, tc.v6, nil, slog.Default()).portRules(e, tc.m))
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
