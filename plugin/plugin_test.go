package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
)

type harness struct {
	t     testing.TB
	dp    *drivertest.Dataplane
	store *state.Store
	dir   string
	drv   *driver.Driver
	srv   *httptest.Server
	log   *slog.Logger
	// config adjusts the driver's configuration at each open.
	config func(*driver.Config)
}

// testOwnerGoneWait shortens the wait for a dying owner of an address or
// port (driver.Config.OwnerGoneWait): tests of real conflicts would each
// wait 5 s.
const testOwnerGoneWait = 100 * time.Millisecond

func newHarness(t testing.TB) *harness { return newHarnessWith(t, nil) }

// newHarnessWith is newHarness with config adjusting the driver's
// configuration, also at each restart.
func newHarnessWith(t testing.TB, config func(*driver.Config)) *harness {
	h := &harness{t: t, dp: drivertest.New(), dir: t.TempDir(), log: slog.New(slog.DiscardHandler), config: config}
	h.open()
	t.Cleanup(h.close)
	return h
}

// open starts a driver on the harness's state directory, as a restarted
// plugin would.
func (h *harness) open() {
	var err error
	if h.store, err = state.Open(h.dir); err != nil {
		h.t.Fatal(err)
	}
	cfg := driver.Config{Log: h.log, Store: h.store, Dataplane: h.dp, OwnerGoneWait: testOwnerGoneWait, DefaultPools: []ipam.PoolSpec{{Base: netip.MustParsePrefix("10.213.0.0/22"), Size: 24}}}
	if h.config != nil {
		h.config(&cfg)
	}
	h.drv = driver.New(cfg)
	if err := h.drv.Restore(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	r := NewRouter(h.log, 5e9)
	Register(r, h.drv)
	h.srv = httptest.NewServer(r)
}

func (h *harness) close() {
	h.srv.Close()
	h.store.Close()
}

func (h *harness) restart() {
	h.close()
	h.open()
}

// call posts a raw body and returns the status and the decoded answer.
func (h *harness) call(method string, body any) (int, map[string]any) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	resp, err := http.Post(h.srv.URL+"/"+method, "application/json", rd)
	if b, ok := body.(string); ok && len(b) > maxBody && err != nil && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
		// The server answered and closed at the limit while we were still
		// writing: that is the rejection.
		return 400, map[string]any{"Err": "request body exceeds the limit (connection closed)"}
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if len(bytes.TrimSpace(raw)) > 0 && json.Unmarshal(raw, &out) != nil {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

// endpoint returns an endpoint's record, and whether the driver has it.
func (h *harness) endpoint(id string) (state.Endpoint, bool) { return h.drv.Endpoint(id) }

// ok calls and fails the test unless the call succeeded.
func (h *harness) ok(method string, body any) map[string]any {
	h.t.Helper()
	code, out := h.call(method, body)
	if code != 200 {
		h.t.Fatalf("%s: status %d: %v", method, code, out["Err"])
	}
	return out
}

// fails calls and returns the error text, failing the test on success.
func (h *harness) fails(method string, body any, wantCode int) string {
	h.t.Helper()
	code, out := h.call(method, body)
	if code != wantCode {
		h.t.Fatalf("%s: status %d (%v), want %d", method, code, out, wantCode)
	}
	msg, _ := out["Err"].(string)
	if msg == "" {
		h.t.Fatalf("%s: error answer without Err: %v", method, out)
	}
	return msg
}

func id(c byte) string { return strings.Repeat(string(c), 64) }

func createNetworkReq(nid, pool, gw string, generic map[string]any) map[string]any {
	return map[string]any{
		"NetworkID": nid,
		"Options":   map[string]any{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
		"IPv4Data":  []map[string]any{{"AddressSpace": "local", "Pool": pool, "Gateway": gw}},
	}
}

// createNetwork runs the engine's sequence for `docker network create
// --ipam-driver mynet --subnet pool`.
func (h *harness) createNetwork(nid, pool string) string {
	h.t.Helper()
	p := h.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local", "Pool": pool})
	poolID := p["PoolID"].(string)
	gw := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": poolID, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(nid, p["Pool"].(string), gw["Address"].(string), map[string]any{}))
	return poolID
}

func (h *harness) dump() *Dump { return h.drv.Dump() }

func TestActivateAndCapabilities(t *testing.T) {
	h := newHarness(t)
	out := h.ok("Plugin.Activate", nil)
	if fmt.Sprint(out["Implements"]) != "[NetworkDriver IpamDriver]" {
		t.Fatalf("Activate = %v", out)
	}
	if out := h.ok("NetworkDriver.GetCapabilities", nil); out["Scope"] != "local" {
		t.Fatalf("GetCapabilities = %v", out)
	}
	if out := h.ok("IpamDriver.GetDefaultAddressSpaces", nil); out["LocalDefaultAddressSpace"] != "local" {
		t.Fatalf("GetDefaultAddressSpaces = %v", out)
	}
	if code, _ := h.call("NetworkDriver.AllocateNetwork", "{}"); code != 404 {
		t.Fatalf("AllocateNetwork = %d, want 404 (not implemented)", code)
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t)
	valid := createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{})
	for _, tc := range []struct {
		name, method string
		body         any
		want         string
	}{
		{"malformed", "NetworkDriver.CreateNetwork", `{"NetworkID":`, "decode request"},
		{"empty", "NetworkDriver.CreateNetwork", "", "empty request body"},
		{"trailing", "NetworkDriver.CreateNetwork", `{"NetworkID":"x"} {}`, "trailing data"},
		{"huge", "NetworkDriver.CreateNetwork", `{"NetworkID":"` + strings.Repeat("a", maxBody) + `"}`, "exceeds"},
		{"wrong type", "NetworkDriver.CreateNetwork", `{"NetworkID":5}`, "decode request"},
		{"short id", "NetworkDriver.CreateNetwork", createNetworkReq("abc", "10.1.0.0/24", "", nil), "64 hex"},
		{"non-hex id", "NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": id('g')}, "lowercase hex"},
		{"unknown option", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "", map[string]any{"color": "red"}), "com.docker.network.bridge.name"},
		{"bad mtu", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "", map[string]any{OptMTU: "9"}), "68 to 65535"},
		{"bridge name too long", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "", map[string]any{OptBridgeName: "abcdefghijklmnop"}), "at most 15"},
		{"bridge name wildcard", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "", map[string]any{OptBridgeName: "br+"}), "wildcard"},
		{"bridge name template", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "", map[string]any{OptBridgeName: "br%d"}), "option com.docker.network.bridge.name: interface name \"br%d\" contains '%'"},
		{"gateway outside", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.2.0.1/24", nil), "outside the subnet"},
		{"non-canonical pool", "NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.1/24", "", nil), "host bits"},
		{"bad bool", "NetworkDriver.CreateNetwork", map[string]any{"NetworkID": id('a'), "Options": map[string]any{"com.docker.network.enable_ipv6": "maybe"}, "IPv4Data": valid["IPv4Data"]}, "not a boolean"},
		{"null ipam", "NetworkDriver.CreateNetwork", map[string]any{"NetworkID": id('a'), "Options": map[string]any{}, "IPv4Data": []map[string]any{{"Pool": "0.0.0.0/0"}}}, "not a usable IPv4 subnet"},
		{"unknown address space", "IpamDriver.RequestPool", map[string]any{"AddressSpace": "elsewhere", "Pool": "10.1.0.0/24"}, "address space"},
		{"pool not canonical", "IpamDriver.RequestPool", map[string]any{"Pool": "10.1.0.1/24"}, "use 10.1.0.0/24"},
		{"pool wrong family", "IpamDriver.RequestPool", map[string]any{"Pool": "fd00::/64"}, "not an IPv4 prefix"},
		{"range outside", "IpamDriver.RequestPool", map[string]any{"Pool": "10.1.0.0/24", "SubPool": "10.2.0.0/25"}, "not inside subnet"},
		{"ipam option", "IpamDriver.RequestPool", map[string]any{"Pool": "10.1.0.0/24", "Options": map[string]string{"x": "y"}}, "unknown IPAM option"},
		{"unknown pool", "IpamDriver.RequestAddress", map[string]any{"PoolID": "10.9.0.0/24"}, "not held"},
		{"bad address", "IpamDriver.ReleaseAddress", map[string]any{"PoolID": "10.9.0.0/24", "Address": "nope"}, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := h.fails(tc.method, tc.body, 400)
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not mention %q", msg, tc.want)
			}
			if d := h.dump(); len(d.Networks)+len(d.Pools) != 0 || len(h.dp.Networks) != 0 {
				t.Fatalf("a rejected request left state: %+v", d)
			}
		})
	}
	// And the plugin still serves.
	h.ok("NetworkDriver.GetCapabilities", nil)
}

func TestNetworkEndpointLifecycle(t *testing.T) {
	h := newHarness(t)
	nid, eid := id('a'), id('b')
	poolID := h.createNetwork(nid, "10.1.0.0/24")
	if poolID != "10.1.0.0/24" {
		t.Fatalf("PoolID %q is not the subnet", poolID)
	}
	if n := h.dp.Networks[nid]; n.Bridge != "mn-aaaaaaaaaaaa" || n.IPv4[0].Gateway.String() != "10.1.0.1/24" {
		t.Fatalf("dataplane network = %+v", n)
	}
	// A retried CreateNetwork is a no-op.
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(nid, "10.1.0.0/24", "10.1.0.1/24", map[string]any{}))

	addr := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
	if addr != "10.1.0.2/24" {
		t.Fatalf("first endpoint address %s", addr)
	}
	ce := map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}}
	out := h.ok("NetworkDriver.CreateEndpoint", ce)
	mac := out["Interface"].(map[string]any)["MacAddress"].(string)
	if out["Interface"].(map[string]any)["Address"] != "" {
		t.Fatalf("CreateEndpoint echoed the address: %v", out)
	}
	if again := h.ok("NetworkDriver.CreateEndpoint", ce); again["Interface"].(map[string]any)["MacAddress"] != mac {
		t.Fatalf("retried CreateEndpoint returned another MAC: %v", again)
	}
	// With a MAC from the engine, nothing is returned.
	withMAC := map[string]any{"NetworkID": nid, "EndpointID": id('c'), "Interface": map[string]any{"Address": "10.1.0.9/24", "MacAddress": "02:42:0a:01:00:09"}}
	if out := h.ok("NetworkDriver.CreateEndpoint", withMAC); out["Interface"] != nil {
		t.Fatalf("CreateEndpoint with a MAC answered %v", out)
	}
	j := h.ok("NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"})
	if j["Gateway"] != "10.1.0.1" || j["InterfaceName"].(map[string]any)["SrcName"] != "mncbbbbbbbbbbbb" || j["InterfaceName"].(map[string]any)["DstPrefix"] != "eth" {
		t.Fatalf("Join = %v", j)
	}
	h.ok("NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid})

	// The state survives a restart.
	h.restart()
	if d := h.dump(); len(d.Networks) != 1 || len(d.Endpoints) != 2 {
		t.Fatalf("after restart: %+v", d)
	}
	if next := h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"]; next != "10.1.0.3/24" {
		t.Fatalf("after restart the next address is %v, want 10.1.0.3/24 (no reuse)", next)
	}

	for range 2 { // deletes are idempotent
		h.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
		h.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": "10.1.0.2"})
	}
	h.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": id('c')})
	h.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": "10.1.0.3"})
	h.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": "10.1.0.1"})
	for range 2 {
		h.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": poolID})
		h.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
	}
	if d := h.dump(); len(d.Networks)+len(d.Endpoints)+len(d.Pools) != 0 || len(h.dp.Networks)+len(h.dp.Endpoints) != 0 {
		t.Fatalf("leftovers: %+v, dataplane %v %v", d, h.dp.Networks, h.dp.Endpoints)
	}
	snap, _ := h.store.Load()
	if len(snap.Networks)+len(snap.Endpoints)+len(snap.Pools) != 0 {
		t.Fatalf("leftovers in the store: %+v", snap)
	}
}

func TestFailedCreateLeavesNoRecord(t *testing.T) {
	h := newHarness(t)
	h.dp.FailNext = errors.New("boom")
	msg := h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil), 500)
	if !strings.Contains(msg, "boom") || !strings.Contains(msg, "aaaaaaaaaaaa") {
		t.Fatalf("error %q should name the network and the cause", msg)
	}
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil))
	h.dp.FailNext = errors.New("boom")
	h.fails("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}}, 500)
	snap, _ := h.store.Load()
	if len(snap.Networks) != 1 || len(snap.Endpoints) != 0 || len(h.dp.Endpoints) != 0 {
		t.Fatalf("failed CreateEndpoint left state: %+v", snap)
	}
}

func TestRestoreReconciles(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('c'), "Interface": map[string]any{"Address": "10.1.0.3/24"}})
	// A crash mid-create left a pending network; a reboot took one veth and
	// every bridge.
	must(t, h.store.PutNetwork(state.Network{ID: id('d'), Bridge: "mn-dddddddddddd", Pending: true}))
	delete(h.dp.Endpoints, id('c'))
	delete(h.dp.Networks, id('a'))
	h.dp.Networks[id('e')] = model.Network{ID: id('e')} // an orphan

	h.restart()
	d := h.dump()
	if len(d.Networks) != 1 || d.Networks[0].ID != id('a') || len(d.Endpoints) != 1 || d.Endpoints[0].ID != id('b') {
		t.Fatalf("after restore: %+v", d)
	}
	if _, ok := h.dp.Networks[id('a')]; !ok {
		t.Fatal("the lost bridge was not rebuilt")
	}
	if len(h.dp.Networks) != 1 {
		t.Fatalf("dataplane networks after restore: %v", h.dp.Networks)
	}
}

func TestIPAM(t *testing.T) {
	h := newHarness(t)
	h.dp.Host = []netip.Prefix{netip.MustParsePrefix("10.213.0.0/24")} // a host route
	// Dynamic pools skip the host route and every held pool, as the engine's
	// overlap loop needs.
	p1 := h.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local"})
	p2 := h.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local"})
	if p1["Pool"] != "10.213.1.0/24" || p2["Pool"] != "10.213.2.0/24" {
		t.Fatalf("dynamic pools %v, %v", p1["Pool"], p2["Pool"])
	}
	h.ok("IpamDriver.RequestPool", map[string]any{})
	msg := h.fails("IpamDriver.RequestPool", map[string]any{}, 400)
	if !strings.Contains(msg, "--subnet") {
		t.Fatalf("exhaustion error %q should say how to fix it", msg)
	}

	// An explicit overlapping subnet names the network that holds it.
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.213.1.0/24", "10.213.1.1/24", nil))
	msg = h.fails("IpamDriver.RequestPool", map[string]any{"Pool": "10.213.0.0/16"}, 400)
	if !strings.Contains(msg, "aaaaaaaaaaaa") || !strings.Contains(msg, "10.213.1.0/24") {
		t.Fatalf("overlap error %q should name the pool and the network", msg)
	}

	// Gateway, --ip, --aux-address and exhaustion in a /29 with a range.
	pool := h.ok("IpamDriver.RequestPool", map[string]any{"Pool": "10.50.0.0/29", "SubPool": "10.50.0.4/30"})["PoolID"]
	gw := map[string]any{"PoolID": pool, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}}
	if a := h.ok("IpamDriver.RequestAddress", gw)["Address"]; a != "10.50.0.1/29" {
		t.Fatalf("gateway %v", a)
	}
	if a := h.ok("IpamDriver.RequestAddress", gw)["Address"]; a != "10.50.0.1/29" {
		t.Fatalf("retried gateway request got %v", a)
	}
	h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Address": "10.50.0.2"})
	if msg := h.fails("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Address": "10.50.0.2"}, 400); !strings.Contains(msg, "in use") {
		t.Fatalf("duplicate --ip: %q", msg)
	}
	if msg := h.fails("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Address": "10.60.0.2"}, 400); !strings.Contains(msg, "not in 10.50.0.0/29") {
		t.Fatalf("foreign --ip: %q", msg)
	}
	got := []any{}
	for range 3 { // .7 is the broadcast address
		got = append(got, h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool})["Address"])
	}
	if fmt.Sprint(got) != "[10.50.0.4/29 10.50.0.5/29 10.50.0.6/29]" {
		t.Fatalf("range allocations %v", got)
	}
	msg = h.fails("IpamDriver.RequestAddress", map[string]any{"PoolID": pool}, 500)
	if !strings.Contains(msg, "10.50.0.0/29") || !strings.Contains(msg, "no free address") {
		t.Fatalf("exhaustion error %q should name the pool", msg)
	}
}

// TestConcurrentAllocations is the engine's parallel docker run: every
// address distinct (run with -race).
func TestConcurrentAllocations(t *testing.T) {
	h := newHarness(t)
	pool := h.createNetwork(id('a'), "10.1.0.0/24")
	var wg sync.WaitGroup
	addrs := make([]string, 40)
	errs := make([]error, 40)
	for i := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(h.srv.URL+"/IpamDriver.RequestAddress", "application/json", strings.NewReader(`{"PoolID":"`+pool+`"}`))
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var out struct{ Address string }
			errs[i] = json.NewDecoder(resp.Body).Decode(&out)
			addrs[i] = out.Address
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, a := range addrs {
		if errs[i] != nil || a == "" || seen[a] {
			t.Fatalf("allocation %d: %q, %v (duplicate: %v)", i, a, errs[i], seen[a])
		}
		seen[a] = true
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestParseCreateNetwork(t *testing.T) {
	req := createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptBridgeName: "br-apps", OptMTU: "1400"})
	raw, _ := json.Marshal(req)
	var nreq struct {
		NetworkID string
		Options   map[string]any
		IPv4Data  []map[string]any
	}
	must(t, json.Unmarshal(raw, &nreq))
	code, out := newHarness(t).call("NetworkDriver.CreateNetwork", req)
	if code != 200 {
		t.Fatalf("CreateNetwork: %v", out)
	}
	for _, tc := range []struct {
		name    string
		options map[string]any
		ipv6    []map[string]any
		check   func(NetworkConfig) bool
	}{
		{"defaults", map[string]any{}, nil, func(c NetworkConfig) bool { return c.BridgeName == "mn-aaaaaaaaaaaa" && c.MTU == 0 }},
		{"options", map[string]any{"com.docker.network.generic": map[string]any{OptBridgeName: "br-apps", OptMTU: "1400"}}, nil,
			func(c NetworkConfig) bool { return c.BridgeName == "br-apps" && c.MTU == 1400 }},
		{"ipv6", map[string]any{"com.docker.network.enable_ipv6": true}, []map[string]any{{"Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}},
			func(c NetworkConfig) bool { return c.EnableIPv6 && c.IPv6[0].Gateway.String() == "fd00:1::1/64" }},
		{"ipv6 data ignored without enable_ipv6", map[string]any{}, []map[string]any{{"Pool": "fd00:1::/64"}},
			func(c NetworkConfig) bool { return len(c.IPv6) == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"NetworkID": id('a'), "Options": tc.options, "IPv4Data": nreq.IPv4Data, "IPv6Data": tc.ipv6})
			var r network.CreateNetworkRequest
			must(t, json.Unmarshal(body, &r))
			cfg, err := ParseCreateNetwork(&r)
			if err != nil || !tc.check(cfg) {
				t.Fatalf("ParseCreateNetwork = %+v, %v", cfg, err)
			}
		})
	}
}

func TestReconcileRepairsOutsideDamage(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	ctx := context.Background()
	if repaired, err := h.drv.Reconcile(ctx, false); err != nil || repaired {
		t.Fatalf("first pass after own changes = %v, %v; want no repair", repaired, err)
	}
	if repaired, _ := h.drv.Reconcile(ctx, false); repaired {
		t.Fatal("a pass with nothing changed reported a repair")
	}
	// Someone deletes the bridge and its rules; a container dies and takes
	// its veth along.
	h.dp.Mu.Lock()
	delete(h.dp.Networks, id('a'))
	delete(h.dp.Endpoints, id('b'))
	h.dp.Mu.Unlock()
	repaired, err := h.drv.Reconcile(ctx, false)
	if err != nil || !repaired {
		t.Fatalf("Reconcile = %v, %v; want a repair", repaired, err)
	}
	if _, ok := h.dp.Networks[id('a')]; !ok {
		t.Fatal("network not re-created")
	}
	if d := h.dump(); len(d.Endpoints) != 0 {
		t.Fatalf("stale endpoint kept: %+v", d.Endpoints)
	}
	// A deleted network is not resurrected.
	h.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": id('a')})
	h.drv.Reconcile(ctx, true)
	if len(h.dp.Networks) != 0 {
		t.Fatal("a deleted network came back")
	}
}

// TestReconcileRepairsDamageBesideOwnChanges: damage from outside that
// lands in the same interval as mynet's own changes to other objects is
// repaired by the next pass, not taken in with them.
func TestReconcileRepairsDamageBesideOwnChanges(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	for range 2 {
		if repaired, err := h.drv.Reconcile(ctx, false); err != nil || repaired {
			t.Fatalf("Reconcile = %v, %v; want no repair", repaired, err)
		}
	}
	// A container starts while someone deletes the bridge (which releases
	// the first endpoint's veth) and its rules.
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('c'), "Interface": map[string]any{"Address": "10.1.0.3/24"}})
	h.dp.Mu.Lock()
	delete(h.dp.Networks, id('a'))
	h.dp.Endpoints[id('b')] = model.Endpoint{ID: id('b')} // detached
	h.dp.Mu.Unlock()
	repaired, err := h.drv.Reconcile(ctx, false)
	if err != nil || !repaired {
		t.Fatalf("Reconcile = %v, %v; want a repair", repaired, err)
	}
	h.dp.Mu.Lock()
	defer h.dp.Mu.Unlock()
	if _, ok := h.dp.Networks[id('a')]; !ok {
		t.Fatal("network not re-created")
	}
	if ep := h.dp.Endpoints[id('b')]; ep.NetworkID != id('a') || ep.Bridge == "" {
		t.Fatalf("endpoint not ensured again: %+v", ep)
	}
}

// TestReconcileVerifiesOwnChanges: damage from outside to an object mynet
// changed in the same interval (a bridge deleted right after its network
// was created) is taken in with mynet's change by the first pass, and
// repaired by the second.
func TestReconcileVerifiesOwnChanges(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	h.dp.Mu.Lock()
	delete(h.dp.Networks, id('a'))
	h.dp.Endpoints[id('b')] = model.Endpoint{ID: id('b')} // detached
	h.dp.Mu.Unlock()
	h.drv.Reconcile(ctx, false)
	if repaired, err := h.drv.Reconcile(ctx, false); err != nil || !repaired {
		t.Fatalf("second Reconcile = %v, %v; want a repair", repaired, err)
	}
	h.dp.Mu.Lock()
	defer h.dp.Mu.Unlock()
	if _, ok := h.dp.Networks[id('a')]; !ok {
		t.Fatal("network not re-created")
	}
	if ep := h.dp.Endpoints[id('b')]; ep.NetworkID != id('a') || ep.Bridge == "" {
		t.Fatalf("endpoint not ensured again: %+v", ep)
	}
}

// TestReconcileLetsEndpointCallsThrough: a pass that finds nothing to
// repair takes its fingerprints (iptables-save and link dumps, 60-90 ms at
// 1000 endpoints) while container starts and stops go on, and what they
// change meanwhile is neither taken in half-done nor later taken for damage
// from outside.
func TestReconcileLetsEndpointCallsThrough(t *testing.T) {
	ctx := context.Background()
	pass := func(t *testing.T, h *harness, wantRepair bool) {
		t.Helper()
		if repaired, err := h.drv.Reconcile(ctx, false); err != nil || repaired != wantRepair {
			t.Fatalf("Reconcile = %v, %v; want repaired %v", repaired, err, wantRepair)
		}
	}
	endpoint := func(c byte, addr string) map[string]any {
		return map[string]any{"NetworkID": id('a'), "EndpointID": id(c), "Interface": map[string]any{"Address": addr}}
	}

	t.Run("calls during the fingerprint", func(t *testing.T) {
		h := newHarness(t)
		h.createNetwork(id('a'), "10.1.0.0/24")
		pass(t, h, false)
		pass(t, h, false)
		// The next pass stops inside its fingerprint until a container has
		// started and stopped; with the pass holding endpoint calls up,
		// they would never come.
		calls := make(chan error, 1)
		var once sync.Once
		h.dp.OnFingerprint = func() {
			once.Do(func() {
				go func() {
					create, _ := h.call("NetworkDriver.CreateEndpoint", endpoint('b', "10.1.0.2/24"))
					del, _ := h.call("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
					if create != 200 || del != 200 {
						calls <- fmt.Errorf("CreateEndpoint answered %d, DeleteEndpoint %d", create, del)
						return
					}
					calls <- nil
				}()
				select {
				case err := <-calls:
					if err != nil {
						t.Error(err)
					}
				case <-time.After(10 * time.Second):
					t.Error("a container start and stop waited for a reconcile pass with nothing to repair")
				}
			})
		}
		pass(t, h, false)
		h.dp.OnFingerprint = nil
		pass(t, h, false)
		// Damage from outside is still found.
		h.dp.Mu.Lock()
		delete(h.dp.Networks, id('a'))
		h.dp.Mu.Unlock()
		pass(t, h, true)
	})

	t.Run("change in flight", func(t *testing.T) {
		h := newHarness(t)
		h.createNetwork(id('a'), "10.1.0.0/24")
		pass(t, h, false)
		pass(t, h, false)
		// A CreateEndpoint has made its veth and then fails and rolls it
		// back. A pass that took the veth in as mynet's own would see the
		// rollback as damage from outside.
		inEnsure, fail := make(chan struct{}), make(chan struct{})
		h.dp.AfterEnsure = func(model.Endpoint) error {
			close(inEnsure)
			<-fail
			return errors.New("injected")
		}
		fingerprinted := make(chan struct{}, 1)
		h.dp.OnFingerprint = func() {
			select {
			case fingerprinted <- struct{}{}:
			default:
			}
		}
		created := make(chan int, 1)
		go func() {
			code, _ := h.call("NetworkDriver.CreateEndpoint", endpoint('b', "10.1.0.2/24"))
			created <- code
		}()
		<-inEnsure
		passed := make(chan error, 1)
		go func() {
			repaired, err := h.drv.Reconcile(ctx, false)
			if err == nil && repaired {
				err = errors.New("it reported a repair")
			}
			passed <- err
		}()
		// Let the pass take its fingerprint if it is going to before the
		// create returns; a correct one waits for the create instead.
		select {
		case <-fingerprinted:
		case <-time.After(200 * time.Millisecond):
		}
		close(fail)
		if code := <-created; code == 200 {
			t.Fatal("CreateEndpoint succeeded; want the injected failure")
		}
		if err := <-passed; err != nil {
			t.Fatalf("the pass during the create: %v", err)
		}
		h.dp.OnFingerprint, h.dp.AfterEnsure = nil, nil
		pass(t, h, false)
		if len(h.dp.Endpoints) != 0 {
			t.Fatalf("rolled-back endpoint left in the dataplane: %v", h.dp.Endpoints)
		}
	})
}

// TestStateDumpShowsAllocations: operators, the CLI and the e2e leak check
// read allocations from Mynet.State.
func TestStateDumpShowsAllocations(t *testing.T) {
	h := newHarness(t)
	pool := h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": pool})
	pools := h.ok("Mynet.State", nil)["Pools"].([]any)
	if got := fmt.Sprint(pools[0].(map[string]any)["Addrs"]); got != "[10.1.0.1 10.1.0.2]" {
		t.Fatalf("Addrs in the dump = %s", got)
	}
}

// TestConcurrentEndpoints runs whole endpoint cycles at once, with Joins,
// dumps and reconcile passes in between, as a busy engine does: every
// cycle must succeed, the network's endpoint limit must hold under
// concurrent creates, and nothing may be left. Run with -race.
func TestConcurrentEndpoints(t *testing.T) {
	h := newHarness(t)
	nid := id('a')
	pool := h.createNetwork(nid, "10.1.0.0/24")
	epID := func(i int) string { return fmt.Sprintf("%064x", i+1) }
	cycle := func(i int) error {
		eid := epID(i)
		addr := fmt.Sprintf("10.1.0.%d/24", i+10)
		for _, c := range []struct {
			method string
			body   map[string]any
		}{
			{"NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}}},
			{"NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"}},
			{"NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid}},
			{"NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid}},
		} {
			raw, _ := json.Marshal(c.body)
			resp, err := http.Post(h.srv.URL+"/"+c.method, "application/json", bytes.NewReader(raw))
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("endpoint %d: %s: status %d", i, c.method, resp.StatusCode)
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 64 {
		wg.Go(func() {
			for range 3 {
				errs <- cycle(i)
			}
		})
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := h.drv.Reconcile(context.Background(), false); err != nil {
				errs <- err
			}
			h.drv.Dump()
		}
	})
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if d := h.dump(); len(d.Endpoints) != 0 || len(h.dp.Endpoints) != 0 {
		t.Fatalf("left after the cycles: %d endpoint records, %d in the dataplane", len(d.Endpoints), len(h.dp.Endpoints))
	}

	// 30 concurrent creates against a limit of 10: exactly 10 succeed.
	h.config = func(c *driver.Config) { c.MaxEndpoints = 10 }
	h.restart()
	var ok atomic.Int32
	for i := range 30 {
		wg.Go(func() {
			raw, _ := json.Marshal(map[string]any{"NetworkID": nid, "EndpointID": epID(100 + i), "Interface": map[string]any{"Address": fmt.Sprintf("10.1.0.%d/24", i+10)}})
			resp, err := http.Post(h.srv.URL+"/NetworkDriver.CreateEndpoint", "application/json", bytes.NewReader(raw))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := ok.Load(); got != 10 || len(h.dump().Endpoints) != 10 {
		t.Fatalf("%d creates succeeded and %d endpoints exist with a limit of 10", got, len(h.dump().Endpoints))
	}
	_ = pool
}

// TestConcurrentAddressChurn: addresses requested and released at once by
// many callers in a small pool, so that released addresses come back
// quickly: no address is ever held twice, and after a restart the store
// holds exactly what is held (the gateway).
func TestConcurrentAddressChurn(t *testing.T) {
	h := newHarness(t)
	pool := h.createNetwork(id('a'), "10.1.0.0/26")
	var mu sync.Mutex
	held := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	post := func(method string, body map[string]any) (map[string]any, error) {
		raw, _ := json.Marshal(body)
		resp, err := http.Post(h.srv.URL+"/"+method, "application/json", bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%s: status %d: %v", method, resp.StatusCode, out["Err"])
		}
		return out, nil
	}
	for g := range 40 {
		wg.Go(func() {
			for i := range 20 {
				mac := fmt.Sprintf("02:00:00:00:%02x:%02x", g, i)
				out, err := post("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Options": map[string]string{"com.docker.network.endpoint.macaddress": mac}})
				if err != nil {
					errs <- err
					return
				}
				addr := strings.Split(out["Address"].(string), "/")[0]
				mu.Lock()
				if held[addr] {
					errs <- fmt.Errorf("%s handed out while held", addr)
				}
				held[addr] = true
				mu.Unlock()
				time.Sleep(time.Millisecond) // hold it a moment
				// Unmarked before the release starts: a second holder
				// seen above is an address handed out twice.
				mu.Lock()
				delete(held, addr)
				mu.Unlock()
				if _, err := post("IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": addr}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	h.restart()
	d := h.dump()
	if len(d.Pools) != 1 || !slices.Equal(d.Pools[0].Addrs, []string{"10.1.0.1"}) {
		t.Fatalf("after the churn and a restart the pool holds %v, want only the gateway", d.Pools[0].Addrs)
	}
}
