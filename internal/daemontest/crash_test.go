package daemontest

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// engineStep is one call of the engine's sequence for a network with one
// container that publishes a port, from `docker network create` to
// `docker network rm`.
type engineStep struct {
	method string
	body   func(s *script) any
	after  func(s *script, out map[string]any)
}

type script struct {
	nid, eid, mac  string
	pool, gw, addr string
}

const crashMAC = "02:42:0a:4d:00:63"

var engineSteps = []engineStep{
	{"IpamDriver.RequestPool", func(*script) any { return map[string]any{"AddressSpace": "local", "Pool": "10.77.0.0/24"} },
		func(s *script, out map[string]any) { s.pool = out["PoolID"].(string) }},
	{"IpamDriver.RequestAddress", func(s *script) any {
		return map[string]any{"PoolID": s.pool, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}}
	}, func(s *script, out map[string]any) { s.gw = out["Address"].(string) }},
	{"NetworkDriver.CreateNetwork", func(s *script) any {
		return map[string]any{"NetworkID": s.nid, "Options": map[string]any{"com.docker.network.generic": map[string]any{}},
			"IPv4Data": []map[string]any{{"AddressSpace": "local", "Pool": "10.77.0.0/24", "Gateway": s.gw}}}
	}, nil},
	{"IpamDriver.RequestAddress", func(s *script) any {
		return map[string]any{"PoolID": s.pool, "Options": map[string]string{"com.docker.network.endpoint.macaddress": s.mac}}
	}, func(s *script, out map[string]any) { s.addr = out["Address"].(string) }},
	{"NetworkDriver.CreateEndpoint", func(s *script) any {
		return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid, "Interface": map[string]any{"Address": s.addr, "MacAddress": s.mac}}
	}, nil},
	{"NetworkDriver.Join", func(s *script) any {
		return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid, "SandboxKey": "/x"}
	}, nil},
	{"NetworkDriver.ProgramExternalConnectivity", func(s *script) any {
		return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid, "Options": map[string]any{
			"com.docker.network.portmap": []map[string]any{{"Proto": 6, "Port": 80, "HostPort": 18080, "HostPortEnd": 18080}}}}
	}, nil},
	{"NetworkDriver.RevokeExternalConnectivity", func(s *script) any { return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid} }, nil},
	{"NetworkDriver.Leave", func(s *script) any { return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid} }, nil},
	{"NetworkDriver.DeleteEndpoint", func(s *script) any { return map[string]any{"NetworkID": s.nid, "EndpointID": s.eid} }, nil},
	{"IpamDriver.ReleaseAddress", func(s *script) any { return map[string]any{"PoolID": s.pool, "Address": strings.Split(s.addr, "/")[0]} }, nil},
	{"IpamDriver.ReleaseAddress", func(s *script) any { return map[string]any{"PoolID": s.pool, "Address": strings.Split(s.gw, "/")[0]} }, nil},
	{"IpamDriver.ReleasePool", func(s *script) any { return map[string]any{"PoolID": s.pool} }, nil},
	{"NetworkDriver.DeleteNetwork", func(s *script) any { return map[string]any{"NetworkID": s.nid} }, nil},
}

// TestCrashAtEveryFailpoint kills the daemon with SIGKILL at each step of
// each mutating operation, restarts it, and lets the engine's retry (the
// same request again, as after a transport error) continue the sequence.
// At the crash and at the end, the kernel and the state must agree: no
// orphan link or rule, no leaked or duplicated address, and the namespace
// as clean as before once the network is gone.
func TestCrashAtEveryFailpoint(t *testing.T) {
	for _, fp := range []string{
		"network.create.pending", "bridge.network.bridge", "bridge.network.rules", "network.create.committed",
		"ipam.address.committed",
		"endpoint.create.pending", "bridge.endpoint.veth", "endpoint.create.committed",
		"ports.record", "bridge.ports",
		"endpoint.delete.record", "network.delete.record",
	} {
		t.Run(fp, func(t *testing.T) {
			ns := newNS(t)
			before := ns.snapshot(t)
			d := startDaemon(t, ns)
			d.stop()
			d.start(fp + "=crash")
			s := &script{nid: randHex(32), eid: randHex(32), mac: crashMAC}
			crashed := false
			for _, step := range engineSteps {
				code, out, err := d.call(step.method, step.body(s))
				if err != nil && !crashed {
					crashed = true
					d.wait()
					d.start("")
					d.checkConsistent(s)
					code, out, err = d.call(step.method, step.body(s)) // the engine's retry
				}
				if err != nil || code != 200 {
					t.Fatalf("%s after crash at %s: %d %v %v", step.method, fp, code, out, err)
				}
				if step.after != nil {
					step.after(s, out)
				}
				if step.method == "NetworkDriver.CreateEndpoint" {
					d.checkConsistent(s)
				}
			}
			if !crashed {
				t.Fatalf("failpoint %s was never reached", fp)
			}
			st := d.state()
			if len(st.Networks)+len(st.Endpoints)+len(st.Pools) != 0 {
				t.Fatalf("state not empty at the end: %+v", st)
			}
			// The last veth is deleted just after DeleteEndpoint answers.
			after := ns.snapshot(t)
			for deadline := time.Now().Add(3 * time.Second); after != before && time.Now().Before(deadline); after = ns.snapshot(t) {
				time.Sleep(50 * time.Millisecond)
			}
			if after != before {
				t.Fatalf("namespace not clean:\n--- before\n%s\n--- after\n%s", before, after)
			}
		})
	}
}

// checkConsistent asserts that the kernel holds exactly what the state
// says: a bridge per network, a veth per endpoint, no other mynet link, the
// network's rules, and one address per holder in the pool.
func (d *daemon) checkConsistent(s *script) {
	d.t.Helper()
	st := d.state()
	links := d.ns.run(d.t, "ip", "-o", "link", "show")
	var mine []string
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "mn") {
			mine = append(mine, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	var want []string
	for _, n := range st.Networks {
		want = append(want, n["Bridge"].(string))
	}
	for _, e := range st.Endpoints {
		want = append(want, e["HostVeth"].(string), e["ContainerVeth"].(string))
	}
	slices.Sort(mine)
	slices.Sort(want)
	if !slices.Equal(mine, want) {
		d.t.Fatalf("links %v, state says %v", mine, want)
	}
	rules := d.ns.run(d.t, "iptables-save")
	if got := strings.Contains(rules, "mynet net="+s.nid); got != (len(st.Networks) > 0) {
		d.t.Fatalf("rules of the network present=%v with %d networks in the state:\n%s", got, len(st.Networks), rules)
	}
	for _, p := range st.Pools {
		seen := map[string]bool{}
		for _, a := range p.Addrs {
			if seen[a] {
				d.t.Fatalf("address %s held twice", a)
			}
			seen[a] = true
		}
		if len(p.Addrs) > 2 {
			d.t.Fatalf("pool %s holds %v: more than the gateway and one endpoint (a leak)", p.ID, p.Addrs)
		}
	}
}
