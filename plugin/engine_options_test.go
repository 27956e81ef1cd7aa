package plugin

import (
	"slices"
	"strings"
	"testing"
)

func TestContainerIfacePrefix(t *testing.T) {
	h := newHarness(t)
	req := createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptIfacePrefix: "lan"})
	h.ok("NetworkDriver.CreateNetwork", req)
	h.createNetwork(id('e'), "10.2.0.0/24")
	for _, n := range []byte{'a', 'e'} {
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id(n), "EndpointID": id(n + 1), "Interface": map[string]any{}})
	}
	prefix := func(n byte) any {
		j := h.ok("NetworkDriver.Join", map[string]any{"NetworkID": id(n), "EndpointID": id(n + 1)})
		return j["InterfaceName"].(map[string]any)["DstPrefix"]
	}
	if p, q := prefix('a'), prefix('e'); p != "lan" || q != "eth" {
		t.Fatalf("DstPrefix = %v with the option, %v without; want lan, eth", p, q)
	}
	h.restart()
	if p := prefix('a'); p != "lan" {
		t.Fatalf("after a restart DstPrefix = %v, want lan", p)
	}
	// A repeat with another prefix is another configuration.
	req2 := createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptIfacePrefix: "wan"})
	h.fails("NetworkDriver.CreateNetwork", req2, 400)

	for _, tc := range []struct{ prefix, want string }{
		{"", "is empty"},
		{"abcdefghijklm", "at most 12"},
		{"e-th", `contains '-'`},
		{"eth.", `contains '.'`},
		{"et%d", `contains '%'`},
		{"0eth", "starting with a letter"},
		{"éth", "use letters and digits"},
	} {
		req := createNetworkReq(id('f'), "10.3.0.0/24", "10.3.0.1/24", map[string]any{OptIfacePrefix: tc.prefix})
		if msg := h.fails("NetworkDriver.CreateNetwork", req, 400); !strings.Contains(msg, tc.want) || !strings.Contains(msg, OptIfacePrefix) {
			t.Errorf("prefix %q: error %q, want it to name the option and contain %q", tc.prefix, msg, tc.want)
		}
	}
	// The longest allowed prefix is accepted.
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('f'), "10.3.0.0/24", "10.3.0.1/24", map[string]any{OptIfacePrefix: "abcdefghijk9"}))
}

// TestEndpointOptions: Docker 27 sends the container's per-interface
// sysctls in CreateEndpoint Options and applies them itself; like every
// endpoint option mynet does not use, they are accepted and ignored.
func TestEndpointOptions(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	for i, opts := range []map[string]any{
		{"com.docker.network.endpoint.sysctls": "net.ipv4.conf.IFNAME.log_martians=1,net.ipv6.conf.IFNAME.accept_ra=0"},
		{"com.docker.network.endpoint.ifname": "lan0", "com.example.unknown": map[string]any{"x": 1}},
	} {
		eid := id(byte('b' + i))
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": eid, "Interface": map[string]any{}, "Options": opts})
		if _, ok := h.endpoint(eid); !ok {
			t.Fatalf("endpoint with options %v not created", opts)
		}
	}
}

// TestGatewayModes: nat, nat-unprotected and routed reach the dataplane
// per family, and survive a restart; isolated, which changes the gateway
// itself, is refused by name.
func TestGatewayModes(t *testing.T) {
	h := newHarness(t)
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptGatewayMode4: "nat-unprotected"}))
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('c'), "10.2.0.0/24", "10.2.0.1/24", map[string]any{OptGatewayMode4: "nat", OptGatewayMode6: "nat-unprotected"}))
	h.createNetwork(id('e'), "10.3.0.0/24")
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('1'), "10.5.0.0/24", "10.5.0.1/24", map[string]any{OptGatewayMode4: "routed"}))
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('2'), "10.6.0.0/24", "10.6.0.1/24", map[string]any{OptGatewayMode6: "routed", OptGatewayMode4: "nat-unprotected"}))
	check := func(when string) {
		t.Helper()
		for _, tc := range []struct {
			n              byte
			u4, u6, r4, r6 bool
		}{{'a', true, false, false, false}, {'c', false, true, false, false}, {'e', false, false, false, false}, {'1', false, false, true, false}, {'2', true, false, false, true}} {
			n := h.dp.Networks[id(tc.n)]
			if n.Unprotected4 != tc.u4 || n.Unprotected6 != tc.u6 || n.Routed4 != tc.r4 || n.Routed6 != tc.r6 {
				t.Errorf("%s: network %c unprotected (v4, v6) = (%v, %v), routed (%v, %v); want (%v, %v), (%v, %v)", when, tc.n,
					n.Unprotected4, n.Unprotected6, n.Routed4, n.Routed6, tc.u4, tc.u6, tc.r4, tc.r6)
			}
		}
	}
	check("created")
	h.restart()
	check("after a restart")
	// A repeat with another mode is another configuration.
	h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptGatewayMode4: "nat"}), 400)

	for _, tc := range []struct{ opt, mode, want string }{
		{OptGatewayMode6, "isolated", "only be used for an internal network"},
		{OptGatewayMode4, "Routed", "not a gateway mode"},
		{OptGatewayMode4, "NAT", "not a gateway mode"},
		{OptGatewayMode6, "", "not a gateway mode"},
	} {
		req := createNetworkReq(id('f'), "10.4.0.0/24", "10.4.0.1/24", map[string]any{tc.opt: tc.mode})
		if msg := h.fails("NetworkDriver.CreateNetwork", req, 400); !strings.Contains(msg, tc.want) || !strings.Contains(msg, tc.opt) {
			t.Errorf("%s=%q: error %q, want it to name the option and contain %q", tc.opt, tc.mode, msg, tc.want)
		}
		gw := map[string]any{"Options": map[string]any{optGeneric: map[string]any{tc.opt: tc.mode}}}
		h.fails("NetworkDriver.GwAllocCheck", gw, 400)
	}
}

// TestTrustedHostInterfaces: the names reach the dataplane as a set (split
// at ':' as Docker splits them, empty names skipped), survive a restart and
// are part of the configuration; a name iptables or the kernel would read
// otherwise is refused with the option and the name.
func TestTrustedHostInterfaces(t *testing.T) {
	h := newHarness(t)
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptTrustedIfaces: "vxlan.1:eth3::eth3:wg+"}))
	want := []string{"eth3", "vxlan.1", "wg+"}
	for _, when := range []string{"created", "after a restart"} {
		if when != "created" {
			h.restart()
		}
		if got := h.dp.Networks[id('a')].TrustedInterfaces; !slices.Equal(got, want) {
			t.Errorf("%s: trusted interfaces %q, want %q", when, got, want)
		}
	}
	h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptTrustedIfaces: "eth3"}), 400)
	for _, tc := range []struct{ value, want string }{
		{"eth0:a-name-far-too-long", `"a-name-far-too-long" is 19 bytes`},
		{"eth0:!eth1", `"!eth1" starts with "!"`},
		{"-j", `"-j" starts with "-"`},
		{"eth 0", `contains ' '`},
		{"+", "every interface"},
		{"eth0:+", "every interface"},
		{"a/b", `contains '/'`},
	} {
		req := createNetworkReq(id('f'), "10.4.0.0/24", "10.4.0.1/24", map[string]any{OptTrustedIfaces: tc.value})
		if msg := h.fails("NetworkDriver.CreateNetwork", req, 400); !strings.Contains(msg, tc.want) || !strings.Contains(msg, OptTrustedIfaces) {
			t.Errorf("%q: error %q, want it to name the option and contain %q", tc.value, msg, tc.want)
		}
	}
	if _, ok := h.dp.Networks[id('f')]; ok {
		t.Fatal("a refused network reached the dataplane")
	}
}
