package plugin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/portalloc"
	"github.com/mynet/mynet/state"
)

func portmap(bindings ...map[string]any) map[string]any {
	return map[string]any{optPortMap: bindings}
}

func binding(proto int, hostIP string, hostPort, port int) map[string]any {
	return map[string]any{"Proto": proto, "IP": "", "Port": port, "HostIP": hostIP, "HostPort": hostPort, "HostPortEnd": hostPort}
}

func TestPorts(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	for i, c := range []byte{'b', 'c', 'd'} {
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id(c),
			"Interface": map[string]any{"Address": "10.1.0." + string(rune('2'+i)) + "/24"}})
	}
	program := func(eid string, opts map[string]any) (int, map[string]any) {
		return h.call("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": eid, "Options": opts})
	}
	ports := func(eid string) string { return describePorts(h.ports(eid)) }

	// A range of identical ports becomes one mapping; port 0 takes the first
	// free ephemeral port (30000 is held by a host process).
	var rng []map[string]any
	for p := 8000; p <= 8002; p++ {
		rng = append(rng, binding(6, "", p, p))
	}
	if code, out := program(id('b'), portmap(append(rng, binding(17, "", 0, 53))...)); code != 200 {
		t.Fatalf("program: %v", out)
	}
	if got := ports(id('b')); got != "*:8000-8002->10.1.0.2:8000-8002/tcp, *:30001->10.1.0.2:53/udp" {
		t.Fatalf("ports = %s", got)
	}
	// A repeat keeps the chosen ports.
	program(id('b'), portmap(append(rng, binding(17, "", 0, 53))...))
	if got := ports(id('b')); !strings.Contains(got, "30001") {
		t.Fatalf("repeat changed ports: %s", got)
	}

	// The same host port again fails and names the holder; nothing is kept.
	msg := h.fails("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('c'), "Options": portmap(binding(6, "", 8001, 80))}, 400)
	if !strings.Contains(msg, "8001/tcp") || !strings.Contains(msg, "bbbbbbbbbbbb") {
		t.Fatalf("conflict error %q", msg)
	}
	if len(h.ports(id('c'))) != 0 || h.dp.Ports[id('c')] != nil {
		t.Fatal("a failed program left ports")
	}
	// A port held by a host process is refused; a specific host address
	// does not clash with a different specific one.
	if msg := h.fails("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('c'), "Options": portmap(binding(6, "", 30000, 80))}, 400); !strings.Contains(msg, "in use on the host") {
		t.Fatalf("host conflict error %q", msg)
	}
	h.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('c'), "Options": portmap(binding(6, "192.0.2.1", 9000, 80))})
	h.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('d'), "Options": portmap(binding(6, "192.0.2.2", 9000, 80))})

	// The ports survive a restart and are re-applied.
	h.restart()
	if len(h.dp.Ports[id('b')]) != 2 {
		t.Fatalf("ports not restored: %v", h.dp.Ports)
	}
	for range 2 {
		h.ok("NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
	}
	if len(h.ports(id('b'))) != 0 || h.dp.Ports[id('b')] != nil {
		t.Fatal("revoke left ports")
	}
}

func TestInternalNetwork(t *testing.T) {
	h := newHarness(t)
	req := createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil)
	req["Options"].(map[string]any)["com.docker.network.internal"] = true
	h.ok("NetworkDriver.CreateNetwork", req)
	if !h.dp.Networks[id('a')].Internal {
		t.Fatal("dataplane network is not internal")
	}
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	j := h.ok("NetworkDriver.Join", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
	if j["Gateway"] != "" {
		t.Fatalf("internal network returned gateway %v", j["Gateway"])
	}
	msg := h.fails("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(binding(6, "", 8080, 80))}, 400)
	if !strings.Contains(msg, "internal") {
		t.Fatalf("error %q", msg)
	}
}

func TestNetworkOptions(t *testing.T) {
	h := newHarness(t)
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24",
		map[string]any{OptICC: "false", OptMasquerade: "false", OptHostBinding: "192.0.2.7"}))
	n := h.dp.Networks[id('a')]
	if n.ICC || n.Masquerade {
		t.Fatalf("options not applied: %+v", n)
	}
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	h.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(binding(6, "", 8080, 80))})
	if got := describePorts(h.ports(id('b'))); got != "192.0.2.7:8080->10.1.0.2:80/tcp" {
		t.Fatalf("host_binding_ipv4 not used: %s", got)
	}
	for _, bad := range []map[string]any{{OptICC: "maybe"}, {OptHostBinding: "fd00::1"}, {OptMasquerade: ""}} {
		msg := h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('c'), "10.3.0.0/24", "", bad), 400)
		for k := range bad {
			if !strings.Contains(msg, k) {
				t.Errorf("error %q does not name %s", msg, k)
			}
		}
	}
}

// TestRetriedRequestAddress: the engine resends a request after a
// transport error (a plugin crash after the commit, before the reply); the
// endpoint's MAC, which the engine sends because mynet asks for it, makes
// the retry return the same address instead of allocating a second one.
func TestRetriedRequestAddress(t *testing.T) {
	h := newHarness(t)
	if out := h.ok("IpamDriver.GetCapabilities", nil); out["RequiresMACAddress"] != true {
		t.Fatalf("GetCapabilities = %v", out)
	}
	pool := h.createNetwork(id('a'), "10.1.0.0/24")
	req := map[string]any{"PoolID": pool, "Options": map[string]string{macAddressOption: "02:42:0A:01:00:99"}}
	first := h.ok("IpamDriver.RequestAddress", req)["Address"]
	h.restart()
	if again := h.ok("IpamDriver.RequestAddress", req)["Address"]; again != first {
		t.Fatalf("retry got %v, first %v", again, first)
	}
	other := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Options": map[string]string{macAddressOption: "02:42:0a:01:00:98"}})["Address"]
	if other == first {
		t.Fatal("another endpoint got the same address")
	}
	h.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": strings.TrimSuffix(first.(string), "/24")})
	if next := h.ok("IpamDriver.RequestAddress", req)["Address"]; next == first {
		t.Fatal("after release, the same MAC got its old address back at once (round-robin expected)")
	}
}

// TestStaleEndpointReleasesItsPorts: a container that died with the engine
// leaves an endpoint mynet was never told about; its successor publishing
// the same port must win, not get a conflict.
func TestStaleEndpointReleasesItsPorts(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	for i, c := range []byte{'b', 'c'} {
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id(c),
			"Interface": map[string]any{"Address": "10.1.0." + string(rune('2'+i)) + "/24"}})
	}
	pm := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(binding(6, "", 8080, 80))}
	h.ok("NetworkDriver.ProgramExternalConnectivity", pm)
	h.dp.Mu.Lock()
	delete(h.dp.Endpoints, id('b')) // the veth went with the container
	h.dp.Mu.Unlock()
	pm["EndpointID"] = id('c')
	h.ok("NetworkDriver.ProgramExternalConnectivity", pm)
	if _, ok := h.endpoint(id('b')); ok {
		t.Fatal("stale endpoint kept")
	}
}

// TestDyingEndpointReleasesItsPorts: after an engine crash, dockerd
// handshakes again and restarts the containers while the old container's
// veth still exists (the kernel dismantles its namespace a little later).
// The successor's port request waits for the old endpoint's veth to go
// instead of failing; a conflict with an endpoint created since the
// handshake fails at once.
func TestDyingEndpointReleasesItsPorts(t *testing.T) {
	const ownerGoneWait = 3 * time.Second
	h := newHarnessWith(t, func(c *driver.Config) { c.OwnerGoneWait = ownerGoneWait })
	h.createNetwork(id('a'), "10.1.0.0/24")
	create := func(c byte, last int) {
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id(c),
			"Interface": map[string]any{"Address": fmt.Sprintf("10.1.0.%d/24", last)}})
	}
	create('b', 2)
	pm := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(binding(6, "", 8080, 80))}
	h.ok("NetworkDriver.ProgramExternalConnectivity", pm)
	// Records keep whole seconds: the engine restarts in a later one.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	h.ok("Plugin.Activate", nil)
	create('c', 3)
	go func() {
		time.Sleep(300 * time.Millisecond)
		h.dp.Mu.Lock()
		delete(h.dp.Endpoints, id('b')) // the namespace is gone, and the veth with it
		h.dp.Mu.Unlock()
	}()
	pm["EndpointID"] = id('c')
	h.ok("NetworkDriver.ProgramExternalConnectivity", pm)
	if _, ok := h.endpoint(id('b')); ok {
		t.Fatal("dead endpoint kept")
	}

	// c belongs to the running engine: d's conflict is reported without
	// the wait (well within it, whatever the machine's speed).
	create('d', 4)
	pm["EndpointID"] = id('d')
	start := time.Now()
	if msg := h.fails("NetworkDriver.ProgramExternalConnectivity", pm, 400); !strings.Contains(msg, "already published by endpoint "+id('c')[:12]) {
		t.Fatalf("conflict error: %s", msg)
	}
	if waited := time.Since(start); waited > ownerGoneWait/2 {
		t.Fatalf("a conflict with a live endpoint of the running engine took %v", waited)
	}
}

// TestEndpointLimit: the network refuses endpoints past its limit with
// mynet's own error, before the kernel's "exchange full".
func TestEndpointLimit(t *testing.T) {
	h := newHarnessWith(t, func(c *driver.Config) { c.MaxEndpoints = 2 })
	h.createNetwork(id('a'), "10.1.0.0/24")
	for i, c := range []byte{'b', 'c', 'd'} {
		body := map[string]any{"NetworkID": id('a'), "EndpointID": id(c), "Interface": map[string]any{"Address": "10.1.0." + string(rune('2'+i)) + "/24"}}
		code, out := h.call("NetworkDriver.CreateEndpoint", body)
		if i < 2 && code != 200 {
			t.Fatalf("endpoint %d refused: %v", i, out)
		}
		if i == 2 && (code == 200 || !strings.Contains(out["Err"].(string), "1024 ports")) {
			t.Fatalf("third endpoint: %d %v", code, out)
		}
	}
}

// ports returns the ports an endpoint's record holds.
func (h *harness) ports(eid string) []state.Port {
	e, _ := h.endpoint(eid)
	return e.Ports
}

func describePorts(ports []state.Port) string {
	m := make([]portalloc.Mapping, len(ports))
	for i, p := range ports {
		m[i] = portalloc.Mapping(p)
	}
	return portalloc.Describe(m)
}

// TestRoutedPorts: in a family of gateway mode routed, as in Docker's
// bridge, a binding's host port and host address are ignored and no host
// port is reserved: the mapping opens the container port (HostPort 0), once
// however many bindings name it; the nat family of the same network gets
// its host port as before. A host port held by another endpoint, or by a
// host process, is no conflict in the routed family.
func TestRoutedPorts(t *testing.T) {
	h := newHarness(t)
	req := createNetworkReqV6(id('a'))
	req["Options"].(map[string]any)[optGeneric] = map[string]any{OptGatewayMode6: "routed"}
	h.ok("NetworkDriver.CreateNetwork", req)
	routed4 := createNetworkReq(id('e'), "10.3.0.0/24", "10.3.0.1/24", map[string]any{OptGatewayMode4: "routed"})
	h.ok("NetworkDriver.CreateNetwork", routed4)
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'),
		"Interface": map[string]any{"Address": "10.2.0.2/24", "AddressIPv6": "fd00:1::2/64"}})
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('e'), "EndpointID": id('c'),
		"Interface": map[string]any{"Address": "10.3.0.2/24"}})
	program := func(nid, eid string, opts map[string]any) {
		t.Helper()
		h.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid, "Options": opts})
	}
	program(id('a'), id('b'), portmap(binding(6, "", 8080, 80), binding(6, "", 8081, 80), binding(17, "", 0, 53)))
	want := "*:8080->10.2.0.2:80/tcp, *:8081->10.2.0.2:80/tcp, fd00:1::2:80/tcp (routed), *:30001->10.2.0.2:53/udp, fd00:1::2:53/udp (routed)"
	if got := describePorts(h.ports(id('b'))); got != want {
		t.Fatalf("mixed network: ports = %s, want %s", got, want)
	}
	// 8080 is mynet's on every address, 30000 a host process's (the fake
	// dataplane's): neither matters without a host port.
	program(id('e'), id('c'), portmap(binding(6, "10.9.9.9", 8080, 80), binding(6, "", 30000, 81)))
	want = "10.3.0.2:80/tcp (routed), 10.3.0.2:81/tcp (routed)"
	if got := describePorts(h.ports(id('c'))); got != want {
		t.Fatalf("routed network: ports = %s, want %s", got, want)
	}
	if got := h.dp.Ports[id('c')]; len(got) != 2 || !got[0].Routed() || got[0].HostIP.IsValid() {
		t.Fatalf("dataplane mappings %v, want two without host port or address", got)
	}
}

// TestPublishManyPorts: a -p A-B:C-D of 12,000 ports arrives as one
// request of over 1 MiB (a binding each); the body limit must let it in.
func TestPublishManyPorts(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'),
		"Interface": map[string]any{"Address": "10.1.0.2/24"}})
	const n = 12000
	bindings := make([]map[string]any, n)
	for i := range bindings {
		bindings[i] = binding(6, "0.0.0.0", 40000+i, 1000+i) // clear of 30000, which the fake holds
	}
	req := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(bindings...)}
	if body, _ := json.Marshal(req); len(body) <= 1<<20 {
		t.Fatalf("the request is %d bytes: the test needs one over 1 MiB", len(body))
	}
	h.ok("NetworkDriver.ProgramExternalConnectivity", req)
	if got := len(h.ports(id('b'))); got != n {
		t.Fatalf("%d mappings published, want %d", got, n)
	}
}
