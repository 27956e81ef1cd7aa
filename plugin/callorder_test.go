package plugin

import (
	"strings"
	"testing"
)

// Tests of the call patterns of Docker 27 to 29 (engines.md): replays of
// Leave and DeleteEndpoint, and the orders of Program and
// RevokeExternalConnectivity.

// TestReplayedLeaveAndDelete: engines since 27.0.1 clear stale endpoints at
// startup with Leave and DeleteEndpoint, also for endpoints mynet no
// longer has (deleted, or on a network already gone). All succeed, after
// a plugin restart too, and change nothing else.
func TestReplayedLeaveAndDelete(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.createNetwork(id('e'), "10.2.0.0/24")
	for _, ep := range []struct{ net, id byte }{{'a', 'b'}, {'a', 'c'}, {'e', 'f'}} {
		h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id(ep.net), "EndpointID": id(ep.id), "Interface": map[string]any{}})
	}
	h.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b')})
	h.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": id('e'), "EndpointID": id('f')})
	h.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": id('e')})
	h.restart()
	for _, ids := range [][2]byte{{'a', 'b'}, {'e', 'f'}, {'9', '8'}} {
		req := map[string]any{"NetworkID": id(ids[0]), "EndpointID": id(ids[1])}
		for _, m := range []string{"RevokeExternalConnectivity", "Leave", "DeleteEndpoint"} {
			for range 2 {
				h.ok("NetworkDriver."+m, req)
			}
		}
	}
	d := h.dump()
	if len(d.Networks) != 1 || len(d.Endpoints) != 1 || d.Endpoints[0].ID != id('c') {
		t.Fatalf("replays changed the state: %+v", d)
	}
}

// TestCallOrders runs a container's life, with a second network whose
// endpoint takes the gateway role and gives it back, under the call order
// of engines up to 28 (Revoke before every Leave of the gateway, Program
// after every Join of it) and under Docker 29's (Program and Revoke only
// at role changes, derived from state its proxy keeps in memory, so a
// Leave may come without a Revoke). After each step the published ports
// are exactly those the calls asked for, and nothing is left at the end:
// the fixed host port can be published by a new container.
func TestCallOrders(t *testing.T) {
	const (
		a, b = "A", "B" // endpoints of the container on networks 1 and 2
	)
	type step struct {
		call, ep string
		opts     map[string]any // Program's options beside the port map
		want     map[string]bool
	}
	onA, onB, none := map[string]bool{a: true}, map[string]bool{b: true}, map[string]bool{}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"up to 28", []step{
			{"CreateEndpoint", a, nil, none}, {"Join", a, nil, none}, {"Program", a, nil, onA},
			{"CreateEndpoint", b, nil, onA}, {"Join", b, nil, onA},
			{"Revoke", a, nil, none}, {"Program", b, nil, onB},
			{"Revoke", b, nil, none}, {"Leave", b, nil, none}, {"DeleteEndpoint", b, nil, none}, {"Program", a, nil, onA},
			{"Revoke", a, nil, none}, {"Leave", a, nil, none}, {"DeleteEndpoint", a, nil, none},
		}},
		{"29", []step{
			{"CreateEndpoint", a, nil, none}, {"Join", a, nil, none}, {"Program", a, nil, onA},
			{"CreateEndpoint", b, nil, onA}, {"Join", b, nil, onA},
			// B becomes the IPv4 gateway; A keeps nothing.
			{"Revoke", a, nil, none}, {"Program", b, map[string]any{optNoProxy6to4: true}, onB},
			// B leaves (Revoke first, as 29 does with its state) and A
			// gets the role back.
			{"Revoke", b, nil, none}, {"Leave", b, nil, none}, {"DeleteEndpoint", b, nil, none}, {"Program", a, nil, onA},
			// After a daemon restart the proxy has no state: Leave alone.
			{"Leave", a, nil, none}, {"DeleteEndpoint", a, nil, none},
		}},
		{"29, gateway leaves without Revoke", []step{
			{"CreateEndpoint", a, nil, none}, {"Join", a, nil, none}, {"Program", a, nil, onA},
			{"CreateEndpoint", b, nil, onA}, {"Join", b, nil, onA},
			{"Leave", a, nil, none}, {"Program", b, nil, onB},
			{"DeleteEndpoint", a, nil, onB}, {"DeleteEndpoint", b, nil, none},
		}},
		{"delete without Leave", []step{
			{"CreateEndpoint", a, nil, none}, {"Join", a, nil, none}, {"Program", a, nil, onA},
			{"DeleteEndpoint", a, nil, none},
		}},
		{"repeated Program keeps the ports", []step{
			{"CreateEndpoint", a, nil, none}, {"Join", a, nil, none}, {"Program", a, nil, onA},
			{"Program", a, map[string]any{optNoProxy6to4: false}, onA},
			{"CreateEndpoint", b, nil, onA}, {"Join", b, nil, onA},
			{"Leave", b, nil, onA}, {"DeleteEndpoint", b, nil, onA},
			{"Leave", a, nil, none}, {"Leave", a, nil, none}, {"DeleteEndpoint", a, nil, none},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNetwork(id('1'), "10.1.0.0/24")
			h.createNetwork(id('2'), "10.2.0.0/24")
			ids := map[string][2]string{a: {id('1'), id('a')}, b: {id('2'), id('b')}}
			addr := map[string]string{a: "10.1.0.2/24", b: "10.2.0.2/24"}
			pm := portmap(binding(6, "", 8080, 80))
			for i, s := range tc.steps {
				req := map[string]any{"NetworkID": ids[s.ep][0], "EndpointID": ids[s.ep][1]}
				method := s.call
				switch s.call {
				case "CreateEndpoint":
					req["Interface"] = map[string]any{"Address": addr[s.ep]}
					req["Options"] = pm
				case "Join":
					req["Options"] = pm
				case "Program", "Revoke":
					method += "ExternalConnectivity"
					if s.call == "Program" {
						req["Options"] = portmap(binding(6, "", 8080, 80))
						for k, v := range s.opts {
							req["Options"].(map[string]any)[k] = v
						}
					}
				}
				h.ok("NetworkDriver."+method, req)
				for _, ep := range []string{a, b} {
					rec := len(h.ports(ids[ep][1])) != 0
					rules := h.dp.Ports[ids[ep][1]] != nil
					if rec != s.want[ep] || rules != s.want[ep] {
						t.Fatalf("step %d (%s %s): endpoint %s has ports in its record %v, rules %v; want %v", i, s.call, s.ep, ep, rec, rules, s.want[ep])
					}
				}
			}
			if len(h.dp.Ports) != 0 || len(h.dump().Endpoints) != 0 {
				t.Fatalf("left behind: rules %v, endpoints %+v", h.dp.Ports, h.dump().Endpoints)
			}
			// The host port is free again.
			h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('1'), "EndpointID": id('c'), "Interface": map[string]any{"Address": "10.1.0.3/24"}})
			h.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('1'), "EndpointID": id('c'), "Options": portmap(binding(6, "", 8080, 80))})
		})
	}
}

func TestNoProxy6to4MustBeBoolean(t *testing.T) {
	h := newHarness(t)
	h.createNetwork(id('a'), "10.1.0.0/24")
	h.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Interface": map[string]any{"Address": "10.1.0.2/24"}})
	opts := portmap(binding(6, "", 8080, 80))
	opts[optNoProxy6to4] = "sometimes"
	if msg := h.fails("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": id('a'), "EndpointID": id('b'), "Options": opts}, 400); !strings.Contains(msg, optNoProxy6to4) {
		t.Fatalf("error %q", msg)
	}
	if len(h.ports(id('b'))) != 0 {
		t.Fatal("a refused Program published ports")
	}
}
