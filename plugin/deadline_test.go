package plugin

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/netutil/failpoint"
)

// withDeadline serves the harness's driver through a router with the
// given deadline and last-resort answer bound.
func (h *harness) withDeadline(deadline, answerBy time.Duration) {
	h.srv.Close()
	r := NewRouter(h.log, deadline)
	r.answerBy = answerBy
	Register(r, h.drv)
	h.srv = httptest.NewServer(r)
}

// settle waits until no operation of the driver is under way, including
// work whose call was answered before it ended.
func (h *harness) settle() { h.drv.Drain() }

// TestDeadlineRollsBack: a create stalled past the router's deadline is
// answered with an error naming the call, the object and the deadline, and
// leaves nothing behind, neither when it rolls back before the answer nor
// when the last-resort bound answers while it is still stalled; a retry
// then succeeds.
func TestDeadlineRollsBack(t *testing.T) {
	const deadline = 100 * time.Millisecond
	epReq := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}}
	netReq := createNetworkReq(id('c'), "10.3.0.0/24", "10.3.0.1/24", nil)
	for _, tc := range []struct {
		name, failpoint, method string
		req                     map[string]any
		answerBy                time.Duration
		want                    []string
	}{
		{"endpoint, rolled back before the answer", "endpoint.create.pending=sleep(300ms)", "NetworkDriver.CreateEndpoint", epReq, 10 * time.Second,
			[]string{"create endpoint bbbbbbbbbbbb on network aaaaaaaaaaaa", "rolled back", "deadline of 100ms"}},
		{"endpoint, answered at the last-resort bound", "endpoint.create.pending=sleep(700ms)", "NetworkDriver.CreateEndpoint", epReq, 200 * time.Millisecond,
			[]string{"NetworkDriver.CreateEndpoint (network aaaaaaaaaaaa endpoint bbbbbbbbbbbb)", "will be rolled back", "deadline 100ms"}},
		{"network, rolled back before the answer", "network.create.pending=sleep(300ms)", "NetworkDriver.CreateNetwork", netReq, 10 * time.Second,
			[]string{"create network cccccccccccc", "rolled back", "deadline of 100ms"}},
		{"network, answered at the last-resort bound", "network.create.pending=sleep(700ms)", "NetworkDriver.CreateNetwork", netReq, 200 * time.Millisecond,
			[]string{"NetworkDriver.CreateNetwork (network cccccccccccc)", "will be rolled back", "deadline 100ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil))
			// Only the stalled call gets the short deadline: a slow fsync
			// must not fail the others.
			h.withDeadline(deadline, tc.answerBy)
			t.Cleanup(func() { failpoint.Enable("") })
			must(t, failpoint.Enable(tc.failpoint))

			msg := h.fails(tc.method, tc.req, http.StatusServiceUnavailable)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			h.settle()
			time.Sleep(50 * time.Millisecond) // nothing may come after the work ended either
			snap, err := h.store.Load()
			must(t, err)
			h.dp.Mu.Lock()
			nets, eps := len(h.dp.Networks), len(h.dp.Endpoints)
			h.dp.Mu.Unlock()
			if len(snap.Networks) != 1 || len(snap.Endpoints) != 0 || nets != 1 || eps != 0 {
				t.Fatalf("after the failed call: store %+v; dataplane %d networks, %d endpoints; want only network a", snap, nets, eps)
			}
			if d := h.dump(); len(d.Networks) != 1 || len(d.Endpoints) != 0 {
				t.Fatalf("after the failed call the driver holds %+v", d)
			}

			must(t, failpoint.Enable(""))
			h.withDeadline(10*time.Second, 20*time.Second)
			h.ok(tc.method, tc.req)
		})
	}
}

// TestAbandonedWorkHoldsItsSlot: a call answered at the last-resort bound
// keeps its slot of Limit until its work has ended, so that stuck work
// cannot pile up past the limit.
func TestAbandonedWorkHoldsItsSlot(t *testing.T) {
	h := newHarness(t)
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil))
	h.srv.Close()
	r := NewRouter(h.log, 50*time.Millisecond)
	r.answerBy = 100 * time.Millisecond
	Register(r, h.drv)
	h.srv = httptest.NewServer(Limit(r, 1, 20*time.Millisecond, nil, nil))
	t.Cleanup(func() { failpoint.Enable("") })
	must(t, failpoint.Enable("endpoint.create.pending=sleep(600ms)"))
	epReq := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}}
	h.fails("NetworkDriver.CreateEndpoint", epReq, http.StatusServiceUnavailable)
	if msg := h.fails("NetworkDriver.Join", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')}, http.StatusServiceUnavailable); !strings.Contains(msg, "busy") {
		t.Fatalf("a call while the abandoned work runs: %q, want the limit's refusal", msg)
	}
	h.settle()
	must(t, failpoint.Enable(""))
	// Retried until the slot is back: the rollback ends just after settle.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, out := h.call("NetworkDriver.Join", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
		if code == 500 && strings.Contains(fmt.Sprint(out["Err"]), "not found") {
			break // served, and the endpoint is not there
		}
		if time.Now().After(deadline) {
			t.Fatalf("Join after the abandoned work ended: %d %v", code, out)
		}
	}
}

// TestRemovalsFinish: the engine treats a removal as done whatever the
// answer, so one stalled past the deadline still completes, and so does
// one whose answer went at the last-resort bound, which says so.
func TestRemovalsFinish(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answerBy time.Duration
		code     int
		want     string
	}{
		{"answered when done", 10 * time.Second, 200, ""},
		{"answered at the last-resort bound", 200 * time.Millisecond, 503, "a removal is not cancelled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil))
			epReq := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}}
			h.ok("NetworkDriver.CreateEndpoint", epReq)
			h.withDeadline(100*time.Millisecond, tc.answerBy)
			t.Cleanup(func() { failpoint.Enable("") })
			// Stalled after the record is gone, before the kernel objects go.
			must(t, failpoint.Enable("endpoint.delete.record=sleep(500ms)"))
			code, out := h.call("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
			if msg, _ := out["Err"].(string); code != tc.code || !strings.Contains(msg, tc.want) {
				t.Fatalf("DeleteEndpoint: %d %v, want %d and an error with %q", code, out, tc.code, tc.want)
			}
			h.settle()
			snap, err := h.store.Load()
			must(t, err)
			h.dp.Mu.Lock()
			eps := len(h.dp.Endpoints)
			h.dp.Mu.Unlock()
			if len(snap.Endpoints) != 0 || eps != 0 {
				t.Fatalf("the stalled delete did not finish: %d records, %d endpoints in the dataplane", len(snap.Endpoints), eps)
			}
		})
	}
}

// TestPortsPastDeadline: ports whose rules were made after the deadline
// are removed again, and the record forgets them.
func TestPortsPastDeadline(t *testing.T) {
	h := newHarness(t)
	h.ok("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", nil))
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	h.withDeadline(100*time.Millisecond, 10*time.Second)
	t.Cleanup(func() { failpoint.Enable("") })
	must(t, failpoint.Enable("ports.record=sleep(300ms)"))
	req := map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": portmap(binding(6, "", 8001, 80))}
	msg := h.fails("NetworkDriver.ProgramExternalConnectivity", req, http.StatusServiceUnavailable)
	if !strings.Contains(msg, "publish ports of endpoint bbbbbbbbbbbb") || !strings.Contains(msg, "rolled back") || !strings.Contains(msg, "deadline of 100ms") {
		t.Errorf("error %q should name the endpoint, the rollback and the deadline", msg)
	}
	snap, err := h.store.Load()
	must(t, err)
	h.dp.Mu.Lock()
	rules := len(h.dp.Ports)
	h.dp.Mu.Unlock()
	if len(snap.Endpoints) != 1 || len(snap.Endpoints[0].Ports) != 0 || rules != 0 {
		t.Fatalf("after the failed call: records %+v, %d endpoints with port rules", snap.Endpoints, rules)
	}
	must(t, failpoint.Enable(""))
	h.withDeadline(10*time.Second, 20*time.Second)
	h.ok("NetworkDriver.ProgramExternalConnectivity", req)
}
