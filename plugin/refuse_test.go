package plugin

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// refusal is one request mynet must answer with a 400 whose message names
// the field at fault, changing nothing.
type refusal struct {
	name, method string
	body         any    // a request, or a func() any evaluated after the setup
	want         string // a substring naming the field and the problem
}

// snapshot renders the state as the driver holds it, as the store holds
// it, and the fake dataplane's objects, for comparing before and after.
func (h *harness) snapshot() string {
	h.t.Helper()
	d := h.dump()
	slices.SortFunc(d.Networks, func(a, b state.Network) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(d.Endpoints, func(a, b state.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(d.Pools, func(a, b state.Pool) int { return cmp.Compare(a.ID, b.ID) })
	snap, err := h.store.Load()
	if err != nil {
		h.t.Fatal(err)
	}
	fp, _ := h.dp.Fingerprint()
	raw, _ := json.Marshal(struct {
		Dump  *Dump
		Store any
		Fake  any
	}{d, snap, fp})
	return string(raw)
}

// runRefusals runs each row on a new harness prepared by setup, so that a
// row accepted by mistake cannot hide what the next one does.
func runRefusals(t *testing.T, setup func(*harness), rows []refusal) {
	t.Helper()
	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			setup(h)
			body := tc.body
			if f, ok := body.(func() any); ok {
				body = f()
			}
			before := h.snapshot()
			msg := h.fails(tc.method, body, 400)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
			if after := h.snapshot(); after != before {
				t.Errorf("the refused request changed the state or the dataplane:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// refusalNetworks creates network a (10.1.0.0/24, gateway 10.1.0.1,
// through mynet's IPAM) with endpoint b (10.1.0.2, MAC given), and a
// dual-stack network d (10.2.0.0/24 and fd00:1::/64) with endpoint c
// (10.2.0.2 and fd00:1::2, MAC chosen by mynet); it returns c's MAC.
func refusalNetworks(h *harness) string {
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(id('a'), id('b'), "10.1.0.2/24", "", "02:42:0a:01:00:02"))
	h.ok("NetworkDriver.CreateNetwork", createNetworkReqV6(id('d')))
	out := h.ok("NetworkDriver.CreateEndpoint", endpointReq(id('d'), id('c'), "10.2.0.2/24", "fd00:1::2/64", ""))
	return out["Interface"].(map[string]any)["MacAddress"].(string)
}

// createNetworkReqV6 is the request for a dual-stack network with the
// subnets 10.2.0.0/24 and fd00:1::/64.
func createNetworkReqV6(nid string) map[string]any {
	return map[string]any{
		"NetworkID": nid,
		"Options":   map[string]any{optEnableIPv6: true, optGeneric: map[string]any{}},
		"IPv4Data":  []map[string]any{{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}},
		"IPv6Data":  []map[string]any{{"Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}},
	}
}

func endpointReq(nid, eid, addr, addr6, mac string) map[string]any {
	return map[string]any{"NetworkID": nid, "EndpointID": eid,
		"Interface": map[string]any{"Address": addr, "AddressIPv6": addr6, "MacAddress": mac}}
}

func TestCreateEndpointRefusals(t *testing.T) {
	var macC string
	setup := func(h *harness) { macC = refusalNetworks(h) }
	a, d, e := id('a'), id('d'), id('e')
	ce := "NetworkDriver.CreateEndpoint"
	runRefusals(t, setup, []refusal{
		{"gateway", ce, endpointReq(a, e, "10.1.0.1/24", "", ""), "Interface.Address 10.1.0.1/24 is the network's gateway"},
		{"network address", ce, endpointReq(a, e, "10.1.0.0/24", "", ""), "Interface.Address 10.1.0.0/24 is the network address"},
		{"broadcast address", ce, endpointReq(a, e, "10.1.0.255/24", "", ""), "Interface.Address 10.1.0.255/24 is the broadcast address"},
		{"another prefix length", ce, endpointReq(a, e, "10.1.0.5/16", "", ""), "Interface.Address 10.1.0.5/16 has another prefix length"},
		{"longer prefix length", ce, endpointReq(a, e, "10.1.0.5/32", "", ""), "Interface.Address 10.1.0.5/32 has another prefix length"},
		{"IPv6 gateway", ce, endpointReq(d, e, "10.2.0.3/24", "fd00:1::1/64", ""), "Interface.AddressIPv6 fd00:1::1/64 is the network's gateway"},
		// Refused already before these rules; kept as regression rows.
		{"outside the subnet", ce, endpointReq(a, e, "10.9.0.5/24", "", ""), "Interface.Address 10.9.0.5/24 is not in any subnet"},
		{"IPv6 outside the subnet", ce, endpointReq(d, e, "10.2.0.3/24", "fd00:2::3/64", ""), "Interface.AddressIPv6 fd00:2::3/64 is not in any subnet"},
		// And this one refused, but without naming the field.
		{"multicast MAC", ce, endpointReq(a, e, "10.1.0.3/24", "", "01:00:5e:00:00:01"), "Interface.MacAddress 01:00:5e:00:00:01 is a multicast address"},
		{"duplicate IPv4", ce, endpointReq(a, e, "10.1.0.2/24", "", ""), "Interface.Address 10.1.0.2/24 is already the address of endpoint bbbbbbbbbbbb"},
		{"duplicate IPv6", ce, endpointReq(d, e, "10.2.0.3/24", "fd00:1::2/64", ""), "Interface.AddressIPv6 fd00:1::2/64 is already the address of endpoint cccccccccccc"},
		{"duplicate MAC", ce, endpointReq(a, e, "10.1.0.3/24", "", "02:42:0a:01:00:02"), "Interface.MacAddress 02:42:0a:01:00:02 is already the MAC of endpoint bbbbbbbbbbbb"},
		{"duplicate MAC in capitals", ce, endpointReq(a, e, "10.1.0.3/24", "", "02:42:0A:01:00:02"), "Interface.MacAddress 02:42:0a:01:00:02 is already"},
		{"duplicate of a MAC mynet chose", ce, func() any { return endpointReq(d, e, "10.2.0.3/24", "", macC) }, "is already the MAC of endpoint cccccccccccc"},
		{"all-zero MAC", ce, endpointReq(a, e, "10.1.0.3/24", "", "00:00:00:00:00:00"), "Interface.MacAddress 00:00:00:00:00:00 is the all-zero address"},
		{"retry with another address", ce, endpointReq(a, id('b'), "10.1.0.3/24", "", "02:42:0a:01:00:02"), "Interface.Address"},
		{"retry with another MAC", ce, endpointReq(a, id('b'), "10.1.0.2/24", "", "02:42:0a:01:00:99"), "Interface.MacAddress"},
		{"retry choosing a MAC when one was given", ce, endpointReq(a, id('b'), "10.1.0.2/24", "", ""), "Interface.MacAddress"},
		{"retry with another IPv6 address", ce, endpointReq(d, id('c'), "10.2.0.2/24", "fd00:1::3/64", ""), "Interface.AddressIPv6"},
		{"retry without the IPv6 address", ce, endpointReq(d, id('c'), "10.2.0.2/24", "", ""), "Interface.AddressIPv6"},
		{"delete naming another network", "NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": d, "EndpointID": id('b')}, "not on the NetworkID dddddddddddd"},
		{"delete naming an unknown network", "NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": id('f'), "EndpointID": id('b')}, "not on the NetworkID ffffffffffff"},
	})

	// Identical retries still succeed, with the answer of the first call.
	h := newHarness(t)
	setup(h)
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(a, id('b'), "10.1.0.2/24", "", "02:42:0a:01:00:02"))
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(a, id('b'), "10.1.0.2/24", "", "02:42:0A:01:00:02"))
	if out := h.ok("NetworkDriver.CreateEndpoint", endpointReq(d, id('c'), "10.2.0.2/24", "fd00:1::2/64", "")); out["Interface"].(map[string]any)["MacAddress"] != macC {
		t.Fatalf("retry answered %v, want MAC %s", out, macC)
	}
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(d, id('c'), "10.2.0.2/24", "fd00:1::2/64", macC))
	// Uniqueness is per network: b's address and MAC are free on d.
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(d, e, "10.2.0.9/24", "", "02:42:0a:01:00:02"))
	// A /31 has no network or broadcast address (RFC 3021).
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('f'), "10.3.0.0/31", "10.3.0.0/31", map[string]any{}))
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(id('f'), id('9'), "10.3.0.1/31", "", ""))
}

// The uniqueness index follows endpoints through deletes, restarts, the
// reconcile's drops and network deletes.
func TestEndpointUniquenessIndex(t *testing.T) {
	h := newHarness(t)
	refusalNetworks(h)
	a, d := id('a'), id('d')
	dupB := endpointReq(a, id('e'), "10.1.0.2/24", "", "02:42:0a:01:00:02")

	h.restart()
	if msg := h.fails("NetworkDriver.CreateEndpoint", dupB, 400); !strings.Contains(msg, "already the address") {
		t.Fatalf("after a restart: %s", msg)
	}
	h.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": a, "EndpointID": id('b')})
	h.ok("NetworkDriver.CreateEndpoint", dupB) // b's address and MAC are free again

	// c's container dies without the engine telling mynet: the reconcile
	// drops it, and its addresses are free.
	h.dp.Mu.Lock()
	delete(h.dp.Endpoints, id('c'))
	h.dp.Mu.Unlock()
	if _, err := h.drv.Reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(d, id('f'), "10.2.0.2/24", "fd00:1::2/64", ""))

	// A network deleted with endpoints left frees them with it.
	// Created again, the network has every address free.
	h.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": d})
	h.ok("NetworkDriver.CreateNetwork", createNetworkReqV6(d))
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(d, id('f'), "10.2.0.2/24", "fd00:1::2/64", ""))
}

// Two concurrent creates of one address: the second is refused while the
// first is still building its veth, and the address is free again if the
// first fails.
func TestDuplicateAddressWhileCreating(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	entered, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	defer unblock() // even when the test fails, before the server closes
	h.dp.AfterEnsure = func(e model.Endpoint) error {
		if e.ID != id('b') {
			return nil
		}
		close(entered)
		<-release
		return fmt.Errorf("veth failed")
	}
	done := make(chan int)
	go func() {
		code, _ := h.call("NetworkDriver.CreateEndpoint", endpointReq(id('a'), id('b'), "10.1.0.2/24", "", ""))
		done <- code
	}()
	<-entered
	if msg := h.fails("NetworkDriver.CreateEndpoint", endpointReq(id('a'), id('c'), "10.1.0.2/24", "", ""), 400); !strings.Contains(msg, "already the address of endpoint bbbbbbbbbbbb") {
		t.Errorf("concurrent duplicate: %s", msg)
	}
	unblock()
	if code := <-done; code != 500 {
		t.Fatalf("first create answered %d, want its failure", code)
	}
	h.dp.AfterEnsure = nil
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(id('a'), id('c'), "10.1.0.2/24", "", ""))
}

func TestPublishRefusals(t *testing.T) {
	publish := func(nid, eid string, bindings ...map[string]any) map[string]any {
		return map[string]any{"NetworkID": nid, "EndpointID": eid, "Options": map[string]any{optPortMap: bindings}}
	}
	tcp := func(port, hostPort, hostPortEnd int, hostIP string) map[string]any {
		return map[string]any{"Proto": 6, "Port": port, "HostIP": hostIP, "HostPort": hostPort, "HostPortEnd": hostPortEnd}
	}
	a, b, d, c := id('a'), id('b'), id('d'), id('c')
	pec := "NetworkDriver.ProgramExternalConnectivity"
	runRefusals(t, func(h *harness) { refusalNetworks(h) }, []refusal{
		{"container port 0", pec, publish(a, b, tcp(0, 8080, 8080, "")), "portmap[0]: Port is 0"},
		{"container port 0 after a good one", pec, publish(a, b, tcp(80, 8080, 8080, ""), tcp(0, 8081, 8081, "")), "portmap[1]: Port is 0"},
		{"reversed host port range", pec, publish(a, b, tcp(80, 8090, 8080, "")), "portmap[0]: HostPortEnd 8080 is below HostPort 8090"},
		{"broadcast host IP", pec, publish(a, b, tcp(80, 8080, 8080, "255.255.255.255")), "portmap[0]: HostIP 255.255.255.255 is the broadcast address"},
		{"multicast host IP", pec, publish(a, b, tcp(80, 8080, 8080, "224.0.0.1")), "portmap[0]: HostIP 224.0.0.1 is a multicast address"},
		{"IPv4-mapped multicast host IP", pec, publish(a, b, tcp(80, 8080, 8080, "::ffff:239.1.2.3")), "portmap[0]: HostIP ::ffff:239.1.2.3 is a multicast address"},
		{"IPv6 multicast host IP", pec, publish(d, c, tcp(80, 8080, 8080, "ff02::1")), "portmap[0]: HostIP ff02::1 is a multicast address"},
		// Refused before too, but without naming the field.
		{"unparsable host IP", pec, publish(a, b, tcp(80, 8080, 8080, "nope")), `portmap[0]: HostIP "nope"`},
	})
	// The unspecified addresses mean all addresses, and a range may be
	// given low to high or as one port.
	h := newHarness(t)
	refusalNetworks(h)
	h.ok(pec, publish(a, b, tcp(80, 8080, 8080, "0.0.0.0"), tcp(81, 8081, 0, "")))
	h.ok(pec, publish(d, c, tcp(80, 9000, 9010, "::")))
	if got := describePorts(h.ports(c)); got != "*:9000->10.2.0.2:80/tcp, *:9000->fd00:1::2:80/tcp" {
		t.Fatalf("ports of c: %s", got)
	}
}

func TestCreateNetworkRefusals(t *testing.T) {
	f := id('f')
	v4 := []map[string]any{{"Pool": "10.5.0.0/24", "Gateway": "10.5.0.1/24"}}
	create := func(v6 bool, generic map[string]any, ipv4, ipv6 []map[string]any) map[string]any {
		return map[string]any{"NetworkID": f, "Options": map[string]any{optEnableIPv6: v6, optGeneric: generic},
			"IPv4Data": ipv4, "IPv6Data": ipv6}
	}
	ipam := func(pool, gw string) []map[string]any { return []map[string]any{{"Pool": pool, "Gateway": gw}} }
	cn := "NetworkDriver.CreateNetwork"
	none := map[string]any{}
	runRefusals(t, func(h *harness) { refusalNetworks(h) }, []refusal{
		{"IPv4-mapped IPv6 pool", cn, create(true, none, v4, ipam("::ffff:10.6.0.0/120", "")), "IPv6Data[0].Pool ::ffff:10.6.0.0/120 overlaps the IPv4-mapped range"},
		{"IPv6 pool around the IPv4-mapped range", cn, create(true, none, v4, ipam("::/64", "::1/64")), "IPv6Data[0].Pool ::/64 overlaps the IPv4-mapped range"},
		{"IPv6 without IPv6Data", cn, create(true, none, v4, nil), "com.docker.network.enable_ipv6 is true but IPv6Data is empty"},
		{"IPv6 with an MTU under 1280", cn, create(true, map[string]any{OptMTU: "1279"}, v4, ipam("fd00:5::/64", "fd00:5::1/64")), "com.docker.network.driver.mtu: 1279 is below 1280"},
		{"IPv6 gateway ::1", cn, create(true, none, v4, ipam("::/120", "::1/120")), "IPv6Data[0].Gateway ::1 is a loopback address"},
		{"IPv6 multicast gateway", cn, create(true, none, v4, ipam("ff05::/64", "ff05::1/64")), "IPv6Data[0].Gateway ff05::1 is a multicast address"},
		{"IPv6 multicast pool", cn, create(true, none, v4, ipam("ff05::/64", "")), "IPv6Data[0].Pool ff05::/64 overlaps multicast"},
		{"IPv4 loopback gateway", cn, create(false, none, ipam("127.5.0.0/24", "127.5.0.1/24"), nil), "IPv4Data[0].Gateway 127.5.0.1 is a loopback address"},
		{"IPv4 multicast gateway", cn, create(false, none, ipam("239.5.0.0/24", "239.5.0.1/24"), nil), "IPv4Data[0].Gateway 239.5.0.1 is a multicast address"},
		{"IPv4 unspecified gateway", cn, create(false, none, ipam("0.0.0.0/24", "0.0.0.0/24"), nil), "IPv4Data[0].Gateway 0.0.0.0 is the unspecified address"},
		{"IPv4 broadcast gateway", cn, create(false, none, ipam("10.5.0.0/24", "10.5.0.255/24"), nil), "IPv4Data[0].Gateway 10.5.0.255 is the broadcast address of 10.5.0.0/24"},
		{"IPv4 network address as gateway", cn, create(false, none, ipam("10.5.0.0/24", "10.5.0.0/24"), nil), "IPv4Data[0].Gateway 10.5.0.0 is the network address of 10.5.0.0/24"},
		{"IPv4 multicast pool", cn, create(false, none, ipam("239.5.0.0/24", ""), nil), "IPv4Data[0].Pool 239.5.0.0/24 overlaps multicast"},
		{"IPv4 loopback pool", cn, create(false, none, ipam("127.5.0.0/24", ""), nil), "IPv4Data[0].Pool 127.5.0.0/24 overlaps loopback"},
		{"multicast host binding", cn, create(false, map[string]any{OptHostBinding: "224.0.0.1"}, v4, nil), "option com.docker.network.bridge.host_binding_ipv4: 224.0.0.1 is a multicast address"},
		{"broadcast host binding", cn, create(false, map[string]any{OptHostBinding: "255.255.255.255"}, v4, nil), "option com.docker.network.bridge.host_binding_ipv4: 255.255.255.255 is the broadcast address"},
	})
	// An MTU under 1280 is fine without IPv6, and 1280 with it.
	h := newHarness(t)
	h.ok(cn, create(false, map[string]any{OptMTU: "1279"}, v4, nil))
	h.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": f})
	h.ok(cn, create(true, map[string]any{OptMTU: "1280"}, v4, ipam("fd00:5::/64", "fd00:5::1/64")))
}

// An address or MAC held by an endpoint whose container died goes to the
// new endpoint: after dockerd crashes, a --restart container comes back
// with its --ip and --mac-address while its old endpoint, never deleted
// by the engine, is still in the state, and its veth may take a moment
// to go.
func TestEndpointTakesOverDeadOwner(t *testing.T) {
	h := newHarness(t)
	refusalNetworks(h)
	a, b := id('a'), id('b')
	again := endpointReq(a, id('e'), "10.1.0.2/24", "", "02:42:0a:01:00:02")
	hasEndpoint := func(eid string) bool {
		h.dp.Mu.Lock()
		defer h.dp.Mu.Unlock()
		_, ok := h.dp.Endpoints[eid]
		return ok
	}

	// b's veth is already gone.
	h.dp.Mu.Lock()
	delete(h.dp.Endpoints, b)
	h.dp.Mu.Unlock()
	h.ok("NetworkDriver.CreateEndpoint", again)
	if _, ok := h.endpoint(b); ok || !hasEndpoint(id('e')) {
		t.Fatalf("endpoint b kept, or e not made: state %v", h.dump().Endpoints)
	}

	// e's container died with the engine, which has restarted since; its
	// veth goes a moment after the new endpoint is asked for.
	wait := 5 * time.Second
	h.config = func(c *driver.Config) { c.OwnerGoneWait = wait }
	h.restart()
	h.drv.SetEngineActivated(func() time.Time { return time.Now().Add(time.Hour) })
	go func() {
		time.Sleep(300 * time.Millisecond)
		h.dp.Mu.Lock()
		delete(h.dp.Endpoints, id('e'))
		h.dp.Mu.Unlock()
	}()
	h.ok("NetworkDriver.CreateEndpoint", endpointReq(a, id('f'), "10.1.0.2/24", "", "02:42:0a:01:00:02"))
	if _, ok := h.endpoint(id('e')); ok || !hasEndpoint(id('f')) {
		t.Fatalf("endpoint e kept, or f not made: state %v", h.dump().Endpoints)
	}

	// A live owner from before the engine's restart is refused once the
	// wait is over; one from after it at once.
	wait = 200 * time.Millisecond
	h.restart()
	h.drv.SetEngineActivated(func() time.Time { return time.Now().Add(time.Hour) })
	if msg := h.fails("NetworkDriver.CreateEndpoint", endpointReq(a, id('9'), "10.1.0.2/24", "", ""), 400); !strings.Contains(msg, "already the address of endpoint ffffffffffff") {
		t.Fatalf("live owner: %s", msg)
	}
	wait = time.Hour
	h.restart() // the engine's handshake is not since this start
	if msg := h.fails("NetworkDriver.CreateEndpoint", endpointReq(a, id('9'), "10.1.0.3/24", "", "02:42:0a:01:00:02"), 400); !strings.Contains(msg, "already the MAC of endpoint ffffffffffff") {
		t.Fatalf("live owner: %s", msg)
	}
}
