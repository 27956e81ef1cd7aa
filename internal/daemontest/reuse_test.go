package daemontest

import (
	"strings"
	"testing"
	"time"
)

// TestEndpointIDReuse: DeleteEndpoint then CreateEndpoint with the same ID,
// as fast as the engine can send them. The container end Join names must
// exist once the janitor has deleted the old veth: it must not have
// adopted the old pair, nor deleted the new one.
func TestEndpointIDReuse(t *testing.T) {
	ns := newNS(t)
	d := startDaemon(t, ns)
	nid, eid, other := strings.Repeat("a1", 32), strings.Repeat("b2", 32), strings.Repeat("c3", 32)
	d.mustCall("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid, "Options": map[string]any{},
		"IPv4Data": []map[string]any{{"Pool": "10.66.0.0/24", "Gateway": "10.66.0.1/24"}}})
	ep := func(id, addr string) map[string]any {
		return map[string]any{"NetworkID": nid, "EndpointID": id, "Interface": map[string]any{"Address": addr}}
	}
	ids := map[string]any{"NetworkID": nid, "EndpointID": eid}
	d.mustCall("NetworkDriver.CreateEndpoint", ep(other, "10.66.0.3/24"))
	for range 3 {
		d.mustCall("NetworkDriver.CreateEndpoint", ep(eid, "10.66.0.2/24"))
		d.mustCall("NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"})
		d.mustCall("NetworkDriver.Leave", ids)
		d.mustCall("NetworkDriver.DeleteEndpoint", ids)
	}
	d.mustCall("NetworkDriver.CreateEndpoint", ep(eid, "10.66.0.2/24"))
	join := d.mustCall("NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"})
	src, _ := join["InterfaceName"].(map[string]any)["SrcName"].(string)
	// The janitor deletes veths in order: once the other endpoint's is
	// gone, the deletions queued before it have run.
	d.mustCall("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": other})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if !strings.Contains(ns.run(t, "ip", "-o", "link", "show"), "mnvc3c3c3c3c3c3") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the janitor never deleted the other endpoint's veth")
		}
	}
	links := ns.run(t, "ip", "-o", "link", "show")
	if src == "" || !strings.Contains(links, " "+src+"@") {
		t.Fatalf("Join named %q, which does not exist:\n%s", src, links)
	}
	if !strings.Contains(ns.run(t, "ip", "-o", "link", "show", "master", "mn-a1a1a1a1a1a1"), "mnvb2b2b2b2b2b2") {
		t.Fatalf("the endpoint's veth is not on its bridge:\n%s", links)
	}
	d.mustCall("NetworkDriver.DeleteEndpoint", ids)
	d.mustCall("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
}
