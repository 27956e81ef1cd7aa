package doctor

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
	"github.com/mynet/mynet/state"
)

// TestRuleKey: a rule as mynet writes it and as `iptables -S` lists it
// get one key; rules that differ in what they match or do get different
// ones.
func TestRuleKey(t *testing.T) {
	for _, c := range []struct {
		name   string
		args   []string
		line   string
		same   bool
		parsed int // number of arguments splitRule returns, 0: not checked
	}{
		{
			name: "comment quoted, negations, ctstate order",
			args: []string{"-d", "10.1.0.0/24", "!", "-i", "mn-x", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-m", "comment", "--comment", "mynet net=ab", "-j", "DROP"},
			line: `-A C -d 10.1.0.0/24 ! -i mn-x -m conntrack ! --ctstate ESTABLISHED,RELATED -m comment --comment "mynet net=ab" -j DROP`,
			same: true, parsed: 16,
		},
		{
			name: "host address listed with its prefix length, pool masked",
			args: []string{"-d", "fd00::1", "-s", "10.1.0.7/24", "-j", "RETURN"},
			line: "-A C -s 10.1.0.0/24 -d fd00::1/128 -j RETURN",
			same: true,
		},
		{
			name: "match order and modules do not matter",
			args: []string{"-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment", "--comment", "mynet x", "-j", "MYNET-DNAT"},
			line: `-A C -m comment --comment "mynet x" -m addrtype --dst-type LOCAL -j MYNET-DNAT`,
			same: true,
		},
		{
			name: "negation matters",
			args: []string{"-i", "mn-x", "-o", "mn-x", "-j", "DROP"},
			line: "-A C ! -i mn-x -o mn-x -j DROP",
		},
		{
			name: "target matters",
			args: []string{"-d", "10.1.0.1/32", "-j", "RETURN"},
			line: "-A C -d 10.1.0.1/32 -j DROP",
		},
		{
			name: "escaped quote in a comment",
			args: []string{"--comment", `a "b"`, "-j", "ACCEPT"},
			line: `-A C -m comment --comment "a \"b\"" -j ACCEPT`,
			same: true, parsed: 6,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			chain, args, ok := splitRule(c.line)
			if !ok || chain != "C" {
				t.Fatalf("splitRule(%q) = %q, %q, %v", c.line, chain, args, ok)
			}
			if c.parsed > 0 && len(args) != c.parsed {
				t.Errorf("splitRule(%q): %d arguments %q, want %d", c.line, len(args), args, c.parsed)
			}
			a, b := ruleKey("filter", "C", c.args), ruleKey("filter", chain, args)
			if (a == b) != c.same {
				t.Errorf("keys equal = %v, want %v:\n%s\n%s", a == b, c.same, a, b)
			}
		})
	}
	if _, _, ok := splitRule("-N C"); ok {
		t.Error("splitRule took a chain declaration for a rule")
	}
}

// TestDoctorRuleVariants: networks of every kind whose rules differ (gateway
// modes nat-unprotected, routed with a trusted interface and isolated;
// IPv6, IPv6-only, inhibit_ipv4, internal, no ICC, no masquerading) and the
// forward hook in DOCKER-USER are healthy to the doctor; a missing IPv6
// direct-routing drop is found.
func TestDoctorRuleVariants(t *testing.T) {
	nstest.RequireCommand(t, "ip6tables")
	withDoctor(t, func(h *docHarness) {
		// Docker's DOCKER-USER, made after mynet's chains: the next
		// ensure moves the forward hook there.
		h.sh("iptables -w -N DOCKER-USER && ip6tables -w -N DOCKER-USER")
		d := healthyDump()
		d.Networks = append(d.Networks,
			state.Network{ID: docNet2, Bridge: model.BridgeName(docNet2), Masquerade: true, GatewayMode4: driver.GatewayNATUnprotected,
				IPv4: []state.Subnet{{Pool: "10.232.0.0/24", Gateway: "10.232.0.1/24"}},
				IPv6: []state.Subnet{{Pool: "fd00:232::/64", Gateway: "fd00:232::1/64"}}},
			state.Network{ID: unknownNet(3), Bridge: model.BridgeName(unknownNet(3)), Internal: true,
				IPv4: []state.Subnet{{Pool: "10.233.0.0/24", Gateway: "10.233.0.1/24"}}},
			state.Network{ID: unknownNet(4), Bridge: model.BridgeName(unknownNet(4)), ICC: true,
				IPv6: []state.Subnet{{Pool: "fd00:234::/64", Gateway: "fd00:234::1/64"}}},
			state.Network{ID: unknownNet(5), Bridge: model.BridgeName(unknownNet(5)), ICC: true, GatewayMode4: driver.GatewayRouted,
				GatewayMode6: driver.GatewayRouted, TrustedInterfaces: []string{"lo"},
				IPv4: []state.Subnet{{Pool: "10.235.0.0/24", Gateway: "10.235.0.1/24"}},
				IPv6: []state.Subnet{{Pool: "fd00:235::/64", Gateway: "fd00:235::1/64"}}},
			state.Network{ID: unknownNet(6), Bridge: model.BridgeName(unknownNet(6)), Internal: true, GatewayMode4: driver.GatewayIsolated,
				IPv4: []state.Subnet{{Pool: "10.236.0.0/24"}}},
			state.Network{ID: unknownNet(7), Bridge: model.BridgeName(unknownNet(7)), ICC: true, Masquerade: true, InhibitIPv4: true,
				IPv4: []state.Subnet{{Pool: "10.237.0.0/24", Gateway: "10.237.0.1/24"}}},
		)
		h.srv.dump.Store(d)
		for i := range d.Networks {
			if err := h.dp.EnsureNetwork(context.Background(), driver.ModelNetwork(&d.Networks[i])); err != nil {
				t.Fatal(err)
			}
		}
		if out := h.out("iptables -w -S DOCKER-USER"); !strings.Contains(out, "-j "+docChains.Forward) {
			t.Fatalf("forward hook not in DOCKER-USER:\n%s", out)
		}
		rep := h.run()
		if p := problemsExcept(rep, "br_netfilter"); len(p) > 0 {
			t.Fatalf("problems on healthy networks:\n%s", findingsText(rep))
		}
		// The IPv6 drop of the nat network; the nat-unprotected one's
		// IPv6 side (mode nat: gateway_mode_ipv6 unset) has one too.
		var drops []string
		for _, r := range bridge.NetworkRules(docInst, true, driver.ModelNetwork(&d.Networks[3])) {
			if r.Chain == docChains.Direct && slices.Contains(r.Args, "DROP") {
				drops = append(drops, strings.Join(r.Args, " "))
			}
		}
		if len(drops) != 1 {
			t.Fatalf("want one IPv6 drop, got %q", drops)
		}
		h.sh("ip6tables -w -t mangle -D " + docChains.Direct + " " + strings.Replace(drops[0], "mynet net="+unknownNet(4), `"mynet net=`+unknownNet(4)+`"`, 1))
		rep = h.run()
		p := problemsExcept(rep, "br_netfilter")
		if len(p) != 1 || !strings.Contains(p[0].Message, "network "+model.Short(unknownNet(4))+" lacks 1 ip6tables rule of its own: "+docChains.Direct+" (mangle)") {
			t.Errorf("missing IPv6 drop not reported alone:\n%s", findingsText(rep))
		}
	})
}

// unknownNet is a network ID of the variants test.
func unknownNet(i int) string { return "d0c00000000" + string(rune('0'+i)) + strings.Repeat("3", 52) }

func (h *docHarness) out(cmd string) string {
	h.t.Helper()
	b, err := execShell(cmd)
	if err != nil {
		h.t.Fatalf("%s: %v: %s", cmd, err, b)
	}
	return string(b)
}

func execShell(cmd string) ([]byte, error) { return exec.Command("sh", "-c", cmd).CombinedOutput() }
