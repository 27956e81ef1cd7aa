package plugin

import (
	"strings"
	"testing"
)

// v6OnlyReq is Docker 28's CreateNetwork for `--ipv4=false --ipv6
// [--internal] -o generic...`: enable_ipv4 false, an empty IPv4Data, and
// the IPv6 subnet with gw as its Gateway ("" after a GwAllocCheck skip).
func v6OnlyReq(nid, pool, gw string, internal bool, generic map[string]any) map[string]any {
	opts := map[string]any{optEnableIPv4: false, optEnableIPv6: true, optGeneric: generic}
	if internal {
		opts[optInternal] = true
	}
	data := map[string]any{"AddressSpace": "local", "Pool": pool}
	if gw != "" {
		data["Gateway"] = gw
	}
	return map[string]any{"NetworkID": nid, "Options": opts, "IPv4Data": []any{}, "IPv6Data": []any{data}}
}

// TestIPv6OnlyNetwork: a network without IPv4 is built with its IPv6
// subnet only, mynet's IPAM serves it a v6 pool alone, its endpoints have
// only an IPv6 address, Join returns only GatewayIPv6 (which on Docker 28
// is enough to spare the container a docker_gwbridge leg), and ports are
// published over IPv6 only; all of it survives a restart.
func TestIPv6OnlyNetwork(t *testing.T) {
	h := newHarness(t)
	// The engine asks mynet's IPAM for the IPv6 pool only.
	p := h.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local", "Pool": "fd00:7::/64", "V6": true})
	pool := p["Pool"].(string)
	gw := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": p["PoolID"], "Options": map[string]string{gatewayRequestKey: gatewayRequestType}})["Address"].(string)
	h.ok("NetworkDriver.CreateNetwork", v6OnlyReq(id('a'), pool, gw, false, map[string]any{}))
	addr := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": p["PoolID"]})["Address"].(string)
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(id('a'), id('b'), "", addr, ""))

	check := func(when string) {
		t.Helper()
		n := h.dp.Networks[id('a')]
		if len(n.IPv4) != 0 || len(n.IPv6) != 1 || n.IPv6[0].Pool.String() != pool || n.IPv6[0].Gateway.String() != gw {
			t.Fatalf("%s: dataplane network IPv4 %v, IPv6 %v; want no IPv4 and %s with gateway %s", when, n.IPv4, n.IPv6, pool, gw)
		}
		j := h.ok("NetworkDriver.Join", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
		if want := strings.Split(gw, "/")[0]; j["Gateway"] != "" || j["GatewayIPv6"] != want {
			t.Fatalf("%s: Join gateways %q, %q; want none and %s", when, j["Gateway"], j["GatewayIPv6"], want)
		}
	}
	check("created")
	h.restart()
	check("after a restart")

	program := func(b map[string]any) (int, map[string]any) {
		return h.call("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(b)})
	}
	if code, out := program(binding(6, "", 8080, 80)); code != 200 {
		t.Fatalf("program -p 8080:80: %v", out)
	}
	ctr := strings.Split(addr, "/")[0]
	if got, want := describePorts(h.ports(id('b'))), "*:8080->"+ctr+":80/tcp"; got != want {
		t.Fatalf("ports %s, want %s", got, want)
	}
	for _, m := range h.dp.Ports[id('b')] {
		if !m.ContainerIP.Is6() {
			t.Fatalf("dataplane mapping %+v to an IPv4 address", m)
		}
	}
	// An IPv4 host address has no container address of its family (a
	// repeat would keep the ports, so it is revoked first).
	h.ok("NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
	if code, out := program(binding(6, "127.0.0.1", 8081, 80)); code != 400 || !strings.Contains(out["Err"].(string), "no address of host IP 127.0.0.1's family") {
		t.Fatalf("program -p 127.0.0.1:8081:80 = %d %v, want a 400 naming the family", code, out)
	}
}

// TestIPv6OnlyRefusals: requests whose IPv4 side contradicts enable_ipv4,
// or that leave a network with neither family, are refused by name and
// change nothing.
func TestIPv6OnlyRefusals(t *testing.T) {
	cn := "NetworkDriver.CreateNetwork"
	withV4 := v6OnlyReq(id('f'), "fd00:9::/64", "fd00:9::1/64", false, map[string]any{})
	withV4["IPv4Data"] = []map[string]any{{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}}
	neither := v6OnlyReq(id('f'), "fd00:9::/64", "fd00:9::1/64", false, map[string]any{})
	neither["Options"].(map[string]any)[optEnableIPv6] = false
	noV6 := v6OnlyReq(id('f'), "fd00:9::/64", "", false, map[string]any{})
	noV6["IPv6Data"] = []any{}
	runRefusals(t, func(*harness) {}, []refusal{
		{"IPv4Data with enable_ipv4 false", cn, withV4, "enable_ipv4 is false but IPv4Data has the subnet 10.9.0.0/24"},
		{"neither family", cn, neither, "are both false: a network needs IPv4 or IPv6"},
		{"no IPv6 subnet either", cn, noV6, "IPv6Data is empty"},
		{"host_binding_ipv4", cn, v6OnlyReq(id('f'), "fd00:9::/64", "fd00:9::1/64", false, map[string]any{OptHostBinding: "10.0.0.1"}), OptHostBinding + " is 10.0.0.1 but the network has no IPv4"},
		{"no IPv4 without the option", cn, map[string]any{"NetworkID": id('f'), "Options": map[string]any{optGeneric: map[string]any{}}}, "network has no IPv4 subnet"},
	})
}

// TestGwAllocCheckSkips: the answers of moby's GetSkipGwAlloc, through the
// socket: no IPv4 gateway in gateway mode isolated or for an internal
// network with inhibit_ipv4, no IPv6 gateway in isolated; a gateway
// otherwise. Isolated on a network with a way out is refused.
func TestGwAllocCheckSkips(t *testing.T) {
	h := newHarness(t)
	req := func(internal bool, generic map[string]any) map[string]any {
		opts := map[string]any{optEnableIPv6: true, optGeneric: generic}
		if internal {
			opts[optInternal] = true
		}
		return map[string]any{"Options": opts}
	}
	for _, tc := range []struct {
		name         string
		internal     bool
		generic      map[string]any
		skip4, skip6 bool
	}{
		{"default", false, map[string]any{}, false, false},
		{"internal", true, map[string]any{}, false, false},
		{"isolated ipv4", true, map[string]any{OptGatewayMode4: "isolated"}, true, false},
		{"isolated ipv6", true, map[string]any{OptGatewayMode6: "isolated"}, false, true},
		{"isolated both", true, map[string]any{OptGatewayMode4: "isolated", OptGatewayMode6: "isolated"}, true, true},
		{"inhibit_ipv4 internal", true, map[string]any{OptInhibitIPv4: "true"}, true, false},
		// The containers' default route points at the gateway address,
		// which the operator puts on the bridge: the engine reserves it.
		{"inhibit_ipv4 with a way out", false, map[string]any{OptInhibitIPv4: "true"}, false, false},
		{"inhibit_ipv4 false", true, map[string]any{OptInhibitIPv4: "false"}, false, false},
		{"nat-unprotected", false, map[string]any{OptGatewayMode6: "nat-unprotected"}, false, false},
	} {
		out := h.ok("NetworkDriver.GwAllocCheck", req(tc.internal, tc.generic))
		if out["SkipIPv4"] != tc.skip4 || out["SkipIPv6"] != tc.skip6 {
			t.Errorf("%s: GwAllocCheck = %v, want SkipIPv4 %v, SkipIPv6 %v", tc.name, out, tc.skip4, tc.skip6)
		}
	}
	for _, tc := range []struct {
		body map[string]any
		want string
	}{
		{req(false, map[string]any{OptGatewayMode4: "isolated"}), OptGatewayMode4 + ": isolated can only be used for an internal network"},
		{req(false, map[string]any{OptGatewayMode6: "isolated"}), OptGatewayMode6 + ": isolated can only be used for an internal network"},
		{req(true, map[string]any{OptInhibitIPv4: "yes please"}), OptInhibitIPv4},
		{map[string]any{"Options": map[string]any{optEnableIPv4: false, optEnableIPv6: false}}, "are both false"},
	} {
		if msg := h.fails("NetworkDriver.GwAllocCheck", tc.body, 400); !strings.Contains(msg, tc.want) {
			t.Errorf("GwAllocCheck(%v): error %q, want it to contain %q", tc.body, msg, tc.want)
		}
	}
	if len(h.dump().Networks) != 0 {
		t.Fatal("GwAllocCheck created a network")
	}
}

// TestGatewayAddressOffBridge: inhibit_ipv4 and gateway mode isolated keep
// the family's gateway off the bridge. After GwAllocCheck's skip the
// engine sends no Gateway of the family, which CreateNetwork accepts; an
// engine that never asks (before 28.0) sends one anyway, which is kept off
// the bridge just the same. Join returns the IPv4 gateway of an
// inhibit_ipv4 network with a way out, as Docker's bridge does (the
// operator puts it on the bridge), and none on an internal network.
func TestGatewayAddressOffBridge(t *testing.T) {
	h := newHarness(t)
	dual := func(nid, pool4, gw4, pool6, gw6 string, internal bool, generic map[string]any) map[string]any {
		r := v6OnlyReq(nid, pool6, gw6, internal, generic)
		r["Options"].(map[string]any)[optEnableIPv4] = true
		v4 := map[string]any{"Pool": pool4}
		if gw4 != "" {
			v4["Gateway"] = gw4
		}
		r["IPv4Data"] = []any{v4}
		return r
	}
	isolated := map[string]any{OptGatewayMode4: "isolated", OptGatewayMode6: "isolated"}
	inhibit := map[string]any{OptInhibitIPv4: "true"}
	for _, tc := range []struct {
		name       string
		n          byte
		req        map[string]any
		off4, off6 bool
		joinGW     string
	}{
		{"isolated after the skip", 'a', dual(id('a'), "10.1.0.0/24", "", "fd00:1::/64", "", true, isolated), true, true, ""},
		{"isolated with gateways (20.10)", 'c', dual(id('c'), "10.2.0.0/24", "10.2.0.1/24", "fd00:2::/64", "fd00:2::1/64", true, isolated), true, true, ""},
		{"isolated IPv6 only", 'e', dual(id('e'), "10.3.0.0/24", "10.3.0.1/24", "fd00:3::/64", "", true, map[string]any{OptGatewayMode6: "isolated"}), false, true, ""},
		{"inhibit_ipv4", '1', dual(id('1'), "10.4.0.0/24", "10.4.0.1/24", "fd00:4::/64", "fd00:4::1/64", false, inhibit), true, false, "10.4.0.1"},
		{"inhibit_ipv4 internal after the skip", '3', dual(id('3'), "10.5.0.0/24", "", "fd00:5::/64", "fd00:5::1/64", true, inhibit), true, false, ""},
		{"control", '5', dual(id('5'), "10.6.0.0/24", "10.6.0.1/24", "fd00:6::/64", "fd00:6::1/64", false, map[string]any{}), false, false, "10.6.0.1"},
	} {
		h.ok("NetworkDriver.CreateNetwork", tc.req)
		h.ok("NetworkDriver.CreateEndpoint", endpointReq(id(tc.n), id(tc.n+1), strings.Replace(tc.req["IPv4Data"].([]any)[0].(map[string]any)["Pool"].(string), ".0/24", ".9/24", 1), "", ""))
		for _, when := range []string{"created", "after a restart"} {
			if when != "created" {
				h.restart()
			}
			n := h.dp.Networks[id(tc.n)]
			if n.NoBridgeIPv4 != tc.off4 || n.NoBridgeIPv6 != tc.off6 {
				t.Errorf("%s, %s: gateway off the bridge (v4, v6) = (%v, %v), want (%v, %v)", tc.name, when, n.NoBridgeIPv4, n.NoBridgeIPv6, tc.off4, tc.off6)
			}
			j := h.ok("NetworkDriver.Join", map[string]any{"NetworkID": id(tc.n), "EndpointID": id(tc.n + 1)})
			if j["Gateway"] != tc.joinGW {
				t.Errorf("%s, %s: Join Gateway %q, want %q", tc.name, when, j["Gateway"], tc.joinGW)
			}
		}
	}
}
