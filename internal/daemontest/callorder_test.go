package daemontest

import (
	"strings"
	"testing"
	"time"
)

// TestCallOrders drives a container with endpoints on two networks through
// the real daemon and kernel, under the call order of engines up to 28
// (Revoke before each Leave of the gateway endpoint, Program after the
// gateway moves) and under Docker 29's (Program and Revoke only when the
// gateway role changes, from state the engine keeps in memory: after a
// daemon restart a Leave comes without Revoke). The DNAT rules follow the
// calls exactly; replays of Leave and DeleteEndpoint for endpoints gone,
// after a plugin restart, succeed; nothing is left at the end.
func TestCallOrders(t *testing.T) {
	for _, order := range []string{"up to 28", "29"} {
		t.Run(order, func(t *testing.T) {
			ns := newNS(t)
			d := startDaemon(t, ns)
			n1, n2 := strings.Repeat("a1", 32), strings.Repeat("a2", 32)
			a, b := strings.Repeat("b1", 32), strings.Repeat("b2", 32)
			base := ns.snapshot(t)
			for i, nid := range []string{n1, n2} {
				sub := []string{"10.71.0", "10.72.0"}[i]
				d.mustCall("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid, "Options": map[string]any{},
					"IPv4Data": []map[string]any{{"Pool": sub + ".0/24", "Gateway": sub + ".1/24"}}})
			}
			withNets := ns.snapshot(t)
			pm := map[string]any{"com.docker.network.portmap": []map[string]any{{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}}}
			eps := map[string][3]string{"A": {n1, a, "10.71.0.2"}, "B": {n2, b, "10.72.0.2"}}
			call := func(method, ep string, extra map[string]any) {
				t.Helper()
				req := map[string]any{"NetworkID": eps[ep][0], "EndpointID": eps[ep][1]}
				switch method {
				case "CreateEndpoint":
					req["Interface"] = map[string]any{"Address": eps[ep][2] + "/24"}
					req["Options"] = pm
				case "Join":
					req["SandboxKey"], req["Options"] = "/x", pm
				case "ProgramExternalConnectivity":
					opts := map[string]any{}
					for k, v := range pm {
						opts[k] = v
					}
					for k, v := range extra {
						opts[k] = v
					}
					req["Options"] = opts
				}
				d.mustCall("NetworkDriver."+method, req)
			}
			// published names the endpoints whose container address a
			// DNAT rule of mynet's targets.
			published := func(want string) {
				t.Helper()
				nat := ns.run(t, "iptables-save", "-t", "nat")
				var got []string
				for _, ep := range []string{"A", "B"} {
					if strings.Contains(nat, "--to-destination "+eps[ep][2]) {
						got = append(got, ep)
					}
				}
				if strings.Join(got, " ") != want {
					t.Fatalf("ports published for [%s], want [%s]:\n%s", strings.Join(got, " "), want, nat)
				}
			}

			call("CreateEndpoint", "A", nil)
			call("Join", "A", nil)
			call("ProgramExternalConnectivity", "A", nil)
			published("A")
			call("CreateEndpoint", "B", nil)
			call("Join", "B", nil)
			published("A")
			// B takes the gateway role; 29 marks A's Program of the IPv6
			// gateway elsewhere with no_proxy_6to4, here on B's.
			call("RevokeExternalConnectivity", "A", nil)
			published("")
			call("ProgramExternalConnectivity", "B", map[string]any{"com.docker.network.driver.private.no_proxy_6to4": true})
			published("B")
			// Under 29, the engine restarted here (live-restore): its proxy
			// lost the gateway state, so B's Leave comes alone.
			if order == "up to 28" {
				call("RevokeExternalConnectivity", "B", nil)
				published("")
			}
			call("Leave", "B", nil)
			published("")
			call("DeleteEndpoint", "B", nil)
			call("ProgramExternalConnectivity", "A", nil)
			published("A")
			if order == "up to 28" {
				call("RevokeExternalConnectivity", "A", nil)
			}
			call("Leave", "A", nil)
			published("")
			call("DeleteEndpoint", "A", nil)

			// A restarted engine (27.0.1+) replays Leave and DeleteEndpoint
			// for endpoints it still lists; the plugin restarted too.
			d.stop()
			d.start("")
			for _, ep := range []string{"A", "B"} {
				for range 2 {
					call("Leave", ep, nil)
					call("DeleteEndpoint", ep, nil)
				}
			}
			if s := d.state(); len(s.Endpoints) != 0 {
				t.Fatalf("endpoints left: %v", s.Endpoints)
			}
			// The veths go after the answer (a janitor deletes them).
			for deadline := time.Now().Add(10 * time.Second); ns.snapshot(t) != withNets; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("left behind:\n%s\nwant:\n%s", ns.snapshot(t), withNets)
				}
			}
			for _, nid := range []string{n1, n2} {
				d.mustCall("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
			}
			if s := ns.snapshot(t); s != base {
				t.Fatalf("left behind:\n%s\nwant:\n%s", s, base)
			}
		})
	}
}
