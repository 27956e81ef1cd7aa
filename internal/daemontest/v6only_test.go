package daemontest

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/cli"
)

// TestIPv6OnlyDaemon drives the real daemon through Docker 28's calls for
// an IPv6-only network (--ipv4=false --ipv6 --subnet, mynet's IPAM) with a
// container publishing a port, and checks that ls, inspect and doctor
// show it as it is, before and after a restart (whose reconcile ensures
// the network again), and that removing it leaves the namespace as it was.
func TestIPv6OnlyDaemon(t *testing.T) {
	ns := newNS(t)
	before := ns.snapshot(t)
	d := startDaemon(t, ns)
	nid, eid := randHex(32), randHex(32)
	pool := d.mustCall("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local", "Pool": "fd00:77::/64", "V6": true})["PoolID"].(string)
	gw := d.mustCall("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})["Address"].(string)
	d.mustCall("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid,
		"Options":  map[string]any{"com.docker.network.enable_ipv4": false, "com.docker.network.enable_ipv6": true, "com.docker.network.generic": map[string]any{}},
		"IPv4Data": []any{}, "IPv6Data": []map[string]any{{"AddressSpace": "local", "Pool": "fd00:77::/64", "Gateway": gw}}})
	addr := d.mustCall("IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Options": map[string]string{"com.docker.network.endpoint.macaddress": crashMAC}})["Address"].(string)
	d.mustCall("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"AddressIPv6": addr, "MacAddress": crashMAC}})
	if j := d.mustCall("NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"}); j["Gateway"] != "" || j["GatewayIPv6"] != strings.Split(gw, "/")[0] {
		t.Fatalf("Join = %v, want only GatewayIPv6 %s", j, gw)
	}
	d.mustCall("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid, "Options": map[string]any{
		"com.docker.network.portmap": []map[string]any{{"Proto": 6, "Port": 80, "HostPort": 18081, "HostPortEnd": 18081}}}})
	if v4 := ns.run(t, "ip", "-4", "-o", "addr", "show", "dev", "mn-"+nid[:12]); v4 != "" {
		t.Errorf("the bridge of an IPv6-only network has IPv4 addresses:\n%s", v4)
	}
	if rules := ns.run(t, "iptables-save"); strings.Contains(rules, nid) {
		t.Errorf("iptables rules for an IPv6-only network:\n%s", rules)
	}
	if rules := ns.run(t, "ip6tables-save", "-t", "nat"); !strings.Contains(rules, "--to-destination ["+strings.Split(addr, "/")[0]+"]:80") {
		t.Errorf("no ip6tables DNAT for the published port:\n%s", rules)
	}

	check := func(when string) {
		t.Helper()
		var out bytes.Buffer
		env := &cli.Env{Stdout: &out}
		if err := cli.RunLs([]string{"--name", d.name, "--format", "json"}, env); err != nil {
			t.Fatal(err)
		}
		var views []struct {
			ID         string
			IPv4, IPv6 []struct{ Pool string }
		}
		if err := json.Unmarshal(out.Bytes(), &views); err != nil || len(views) != 1 || len(views[0].IPv4) != 0 || len(views[0].IPv6) != 1 {
			t.Errorf("%s: mynet ls --format json: %v\n%s", when, err, out.String())
		}
		out.Reset()
		if err := cli.RunInspect([]string{"--name", d.name, nid[:6]}, env); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"fd00:77::/64", strings.Split(addr, "/")[0], "[::]:18081->80/tcp"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: mynet inspect lacks %q:\n%s", when, want, out.String())
			}
		}
		text, err := exec.Command("ip", "netns", "exec", ns.name, daemonBin, "doctor", "--name", d.name).CombinedOutput()
		if err != nil || !strings.Contains(string(text), "no problems found") {
			t.Errorf("%s: doctor: %v\n%s", when, err, text)
		}
	}
	check("created")
	d.stop()
	d.start("")
	check("after a restart")

	for _, c := range []struct {
		method string
		body   map[string]any
	}{
		{"NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid}},
		{"NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid}},
		{"NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid}},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": strings.Split(addr, "/")[0]}},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": pool, "Address": strings.Split(gw, "/")[0]}},
		{"IpamDriver.ReleasePool", map[string]any{"PoolID": pool}},
		{"NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid}},
	} {
		d.mustCall(c.method, c.body)
	}
	d.stop()
	if after := ns.snapshot(t); after != before {
		t.Errorf("namespace changed:\n--- before\n%s--- after\n%s", before, after)
	}
}
