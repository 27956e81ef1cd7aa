package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

const (
	netA = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000"
	netB = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000"
)

func cannedState() state.Snapshot {
	return state.Snapshot{
		Networks: []state.Network{{ID: netA, Bridge: "mn-aaaaaaaaaaaa"}, {ID: netB, Bridge: "br-b"}},
		Endpoints: []state.Endpoint{
			{NetworkID: netA, ID: "e1"}, {NetworkID: netA, ID: "e2"},
		},
		Pools: []state.Pool{
			{ID: "10.1.0.0/24", Pool: "10.1.0.0/24", NetworkID: netA, Addrs: []string{"10.1.0.1", "10.1.0.2", "10.1.0.3"}},
			{ID: "10.2.0.0/16", Pool: "10.2.0.0/16", Range: "10.2.1.0/25", NetworkID: netB, Addrs: []string{"10.2.0.1"}},
		},
	}
}

// scrape serves h through the middleware, sends the requests, and returns
// the metrics text.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	return string(b)
}

func TestRequestsAndStateAfterScrape(t *testing.T) {
	m := New(cannedState, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /NetworkDriver.CreateNetwork", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "{}") })
	mux.HandleFunc("POST /NetworkDriver.Join", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"Err":"boom"}`)
	})
	mux.HandleFunc("POST /IpamDriver.RequestAddress", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
	})
	srv := httptest.NewServer(m.Middleware(mux))
	defer srv.Close()
	for _, c := range []struct {
		path string
		n    int
	}{
		{"/NetworkDriver.CreateNetwork", 3},
		{"/NetworkDriver.Join", 2},
		{"/IpamDriver.RequestAddress", 1},
		{"/No.Such", 1},          // 404
		{"/../../etc/passwd", 1}, // not a method path: 301, then 404 on /etc/passwd
	} {
		for range c.n {
			resp, err := http.Post(srv.URL+c.path, "application/json", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	// A GET on a POST route is 405: "other" too.
	resp, err := http.Get(srv.URL + "/NetworkDriver.CreateNetwork")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	text := scrape(t, m)
	for _, want := range []string{
		`mynet_requests_total{method="NetworkDriver.CreateNetwork"} 3`,
		`mynet_requests_total{method="NetworkDriver.Join"} 2`,
		`mynet_requests_total{method="IpamDriver.RequestAddress"} 1`,
		`mynet_requests_total{method="other"} 4`,
		`mynet_request_errors_total{code="500",method="NetworkDriver.Join"} 2`,
		`mynet_request_errors_total{code="400",method="IpamDriver.RequestAddress"} 1`,
		`mynet_request_errors_total{code="404",method="other"} 2`,
		`mynet_request_errors_total{code="405",method="other"} 1`,
		`mynet_request_duration_seconds_count{method="NetworkDriver.CreateNetwork"} 3`,
		`mynet_request_duration_seconds_bucket{method="NetworkDriver.Join",le="+Inf"} 2`,
		`mynet_requests_in_flight 0`,
		`mynet_networks 2`,
		`mynet_endpoints 2`,
		`mynet_network_endpoints{bridge="mn-aaaaaaaaaaaa",network_id="aaaaaaaaaaaa"} 2`,
		`mynet_network_endpoints{bridge="br-b",network_id="bbbbbbbbbbbb"} 0`,
		`mynet_pool_addresses_in_use{network_id="aaaaaaaaaaaa",pool="10.1.0.0/24"} 3`,
		`mynet_pool_addresses{network_id="aaaaaaaaaaaa",pool="10.1.0.0/24"} 256`,
		`mynet_pool_addresses{network_id="bbbbbbbbbbbb",pool="10.2.0.0/16"} 128`,
		`mynet_reconcile_repairs_total`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want+"\n") && !strings.Contains(text, want+" ") {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(text, "passwd") || strings.Contains(text, "No.Such") {
		t.Errorf("unrouted paths became label values:\n%s", grep(text, "mynet_requests_total"))
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", grep(text, "mynet_"))
	}
}

func TestReconcilePassHistogram(t *testing.T) {
	m := New(nil, nil)
	name := `mynet_reconcile_pass_seconds_count{pass="recheck"}`
	ObserveReconcilePass("recheck", 3*time.Millisecond) // the series exists once observed
	before := value(t, scrape(t, m), name)
	ObserveReconcilePass("recheck", 3*time.Millisecond)
	if after := value(t, scrape(t, m), name); after != before+1 {
		t.Fatalf("%s went from %v to %v, want +1", name, before, after)
	}
}

func TestReconcileRepairsCounter(t *testing.T) {
	m := New(nil, nil)
	before := value(t, scrape(t, m), "mynet_reconcile_repairs_total")
	ReconcileRepairs.Inc()
	ReconcileRepairs.Inc()
	if after := value(t, scrape(t, m), "mynet_reconcile_repairs_total"); after != before+2 {
		t.Fatalf("mynet_reconcile_repairs_total went from %v to %v, want +2", before, after)
	}
}

// A driver stuck behind its lock must not take the request metrics down
// with the state gauges.
func TestStuckStateLeavesOtherMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the state timeout")
	}
	block := make(chan struct{})
	defer close(block)
	m := New(func() state.Snapshot { <-block; return state.Snapshot{} }, nil)
	start := time.Now()
	text := scrape(t, m)
	if d := time.Since(start); d > stateTimeout+3*time.Second {
		t.Errorf("scrape took %v", d)
	}
	if strings.Contains(text, "mynet_networks ") {
		t.Errorf("state gauges served without a state")
	}
	if !strings.Contains(text, "mynet_requests_in_flight 0") {
		t.Errorf("request metrics missing:\n%s", grep(text, "mynet_"))
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr, errPart string
	}{
		{"127.0.0.1:9323", ""},
		{"127.0.0.53:9323", ""},
		{"[::1]:9323", ""},
		{"0.0.0.0:9323", "only loopback"},
		{":9323", "only loopback"},
		{"10.0.0.1:9323", "only loopback"},
		{"[::]:9323", "only loopback"},
		{"localhost:9323", "not a name"},
		{"127.0.0.1", "want 127.0.0.1:PORT"},
		{"127.0.0.1:0", "port"},
		{"127.0.0.1:http", "port"},
		{"127.0.0.1:70000", "port"},
	} {
		err := CheckAddr(c.addr)
		switch {
		case c.errPart == "" && err != nil:
			t.Errorf("CheckAddr(%q) = %v, want nil", c.addr, err)
		case c.errPart != "" && (err == nil || !strings.Contains(err.Error(), c.errPart)):
			t.Errorf("CheckAddr(%q) = %v, want an error with %q", c.addr, err, c.errPart)
		}
	}
}

func grep(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func value(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in scrape", name)
	return 0
}

// TestInFlightAndWaiting: with a limit of one request, one request being
// served and one waiting for its slot read as one in flight and one
// waiting, not two in flight; both go back to zero, and the waiting one is
// counted once it is served.
func TestInFlightAndWaiting(t *testing.T) {
	m := New(nil, nil)
	release := make(chan struct{})
	served := make(chan struct{}, 2)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served <- struct{}{}
		<-release // a request stuck in a kernel call
		io.WriteString(w, "{}")
	})
	srv := httptest.NewServer(m.Middleware(plugin.Limit(h, 1, time.Minute, m.Waiting(), m.InFlight())))
	defer srv.Close()
	done := make(chan error, 2)
	post := func() {
		resp, err := http.Post(srv.URL+"/NetworkDriver.CreateEndpoint", "application/json", strings.NewReader("{}"))
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}
	go post()
	<-served
	go post()
	var text string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		text = scrape(t, m)
		if value(t, text, "mynet_requests_waiting") == 1 || time.Now().After(deadline) {
			break
		}
	}
	if in, wait := value(t, text, "mynet_requests_in_flight"), value(t, text, "mynet_requests_waiting"); in != 1 || wait != 1 {
		t.Errorf("one request served and one waiting: in_flight %v, waiting %v; want 1 and 1", in, wait)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	text = scrape(t, m)
	if in, wait := value(t, text, "mynet_requests_in_flight"), value(t, text, "mynet_requests_waiting"); in != 0 || wait != 0 {
		t.Errorf("after both answered: in_flight %v, waiting %v; want 0 and 0", in, wait)
	}
	if n := value(t, text, `mynet_requests_total{method="NetworkDriver.CreateEndpoint"}`); n != 2 {
		t.Errorf("requests_total %v, want 2", n)
	}
}
