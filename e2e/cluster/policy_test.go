package cluster

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// TestClusterICCOff: with enable_icc=false on the cluster network, a
// container on B reaches neither a container on A nor one on B, but still
// its gateway; the same pings pass on a network with ICC on (the control,
// so the probe can fail).
func TestClusterICCOff(t *testing.T) {
	requireClusterMode(t)
	a, b := env.hosts[0], env.hosts[1]
	for _, c := range []struct {
		subnet string
		icc    bool
	}{{"10.77.8.0/24", true}, {"10.77.9.0/24", false}} {
		n := clusterNet(t, "icc-"+randHex(3), c.subnet, "-o", "com.docker.network.bridge.enable_icc="+strconv.FormatBool(c.icc))
		onA, _ := a.start(t, n.name, "a-"+n.name, nil)
		onB, _ := b.start(t, n.name, "b2-"+n.name, nil)
		from := "b-" + n.name
		b.start(t, n.name, from, nil)
		gw := netip.MustParsePrefix(c.subnet).Addr().Next()
		if err := b.ping(from, gw); err != nil {
			t.Errorf("icc=%v: B's container does not reach its gateway %s: %v", c.icc, gw, err)
		}
		for _, to := range []netip.Addr{onA, onB} {
			ping := b.ping
			if !c.icc {
				ping = b.pingBlocked
			}
			if err := ping(from, to); (err == nil) != c.icc {
				t.Errorf("icc=%v: ping from B's container to %s: %v (want success %v)", c.icc, to, err, c.icc)
			}
		}
	}
}

// TestClusterInternal: on an --internal cluster network a container on B
// reaches a container on A, and nothing outside the network: not the
// internet namespace B's other networks reach.
func TestClusterInternal(t *testing.T) {
	requireClusterMode(t)
	a, b := env.hosts[0], env.hosts[1]
	n := clusterNet(t, "internal-"+randHex(3), "10.77.10.0/24", "--internal")
	onA, _ := a.start(t, n.name, "a-"+n.name, nil)
	from := "b-" + n.name
	b.start(t, n.name, from, nil)
	if err := b.ping(from, onA); err != nil {
		t.Errorf("internal network: B's container does not reach A's (%s): %v", onA, err)
	}
	inet := newInternet(t)
	inet.route(t, b)
	if err := b.pingBlocked(from, inet.addr); err == nil {
		t.Errorf("internal network: B's container reaches %s outside the network", inet.addr)
	}
	if got := inet.sources(t); got[b.vtep()]+got["containers"] != 0 {
		t.Errorf("internal network: the internet namespace saw %v packets from B's container", got)
	}
}

// TestClusterSpoofDroppedOnB: a container on B (with NET_ADMIN) pinging A's
// container from an address it does not hold sends nothing through B's
// VXLAN device: mynet drops it on B, before the underlay. The same
// container's genuine pings do go through (the control).
func TestClusterSpoofDroppedOnB(t *testing.T) {
	requireClusterMode(t)
	a, b := env.hosts[0], env.hosts[1]
	n := clusterNet(t, "spoof-"+randHex(3), "10.77.11.0/24")
	dev := vxlan(t, n.name)
	onA, _ := a.start(t, n.name, "a-"+n.name, nil)
	from := "b-" + n.name
	b.start(t, n.name, from, []string{"--cap-add", "NET_ADMIN"})
	if err := b.ping(from, onA); err != nil {
		t.Fatalf("B's container does not reach A's (%s) from its own address: %v", onA, err)
	}
	before := txPackets(t, b, dev)
	if err := b.ping(from, onA); err != nil {
		t.Fatalf("second genuine ping: %v", err)
	}
	if got := txPackets(t, b, dev) - before; got < 2 {
		t.Fatalf("2 genuine pings to A sent %d packets through B's %s: the counter cannot show a drop", got, dev)
	}
	spoofed := "10.77.11.200"
	b.docker(t, "exec", from, "ip", "addr", "add", spoofed+"/32", "dev", "eth0")
	before = txPackets(t, b, dev)
	out, err := b.dockerErr("exec", from, "ping", "-c", "3", "-W", "1", "-I", spoofed, onA.String())
	if err == nil {
		t.Errorf("a ping from the spoofed source %s was answered:\n%s", spoofed, out)
	}
	if got := txPackets(t, b, dev) - before; got != 0 {
		t.Errorf("pings from the spoofed source %s: %d packets left B through %s; want 0", spoofed, got, dev)
	}
}

// txPackets is how many packets dev on h has sent.
func txPackets(t *testing.T, h *host, dev string) uint64 {
	t.Helper()
	var links []struct {
		Stats64 struct {
			TX struct {
				Packets uint64 `json:"packets"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	out := h.ns(t, "ip", "-j", "-s", "link", "show", "dev", dev)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("host %s: ip -j -s link show dev %s: %v: %s", h.letter, dev, err, out)
	}
	return links[0].Stats64.TX.Packets
}

// internet is a namespace on the underlay playing the internet: address
// 198.19.77.100 on the underlay and 198.18.99.1 behind it, inside
// 198.18.0.0/15 and on this machine only. It counts the ICMP it receives
// by source.
type internet struct {
	ns     string
	addr   netip.Addr
	routed []*host
}

const (
	inetNS   = prefix + "-inet"
	inetPort = "ul-inet"
	inetUL   = "198.19.77.100"
)

// newInternet makes the namespace; cleanup removes it and the routes to it.
func newInternet(t *testing.T) *internet {
	t.Helper()
	i := &internet{ns: inetNS, addr: netip.MustParseAddr("198.18.99.1")}
	t.Cleanup(func() {
		for _, h := range i.routed {
			_, _ = run("ip", "-n", h.netns, "route", "del", i.addr.String()+"/32")
		}
		_, _ = run("ip", "netns", "del", i.ns)
		_, _ = run("ip", "-n", prefix+"-ul", "link", "del", inetPort)
	})
	_, _ = run("ip", "netns", "del", i.ns) // left by a killed run
	steps := [][]string{
		{"netns", "add", i.ns},
		{"-n", i.ns, "link", "set", "lo", "up"},
		{"-n", prefix + "-ul", "link", "add", inetPort, "type", "veth", "peer", "name", "ul0", "netns", i.ns},
		{"-n", prefix + "-ul", "link", "set", inetPort, "master", "br0", "up"},
		{"-n", i.ns, "addr", "add", inetUL + "/24", "dev", "ul0"},
		{"-n", i.ns, "link", "set", "ul0", "up"},
		{"-n", i.ns, "addr", "add", i.addr.String() + "/32", "dev", "lo"},
	}
	for _, s := range steps {
		if _, err := run("ip", s...); err != nil {
			t.Fatal(err)
		}
	}
	for _, src := range append(hostVTEPs(), "10.77.0.0/16") {
		if _, err := run("ip", "netns", "exec", i.ns, "iptables", "-A", "INPUT", "-p", "icmp", "-s", src, "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
	}
	return i
}

// route gives h a route to the internet namespace.
func (i *internet) route(t *testing.T, h *host) {
	t.Helper()
	if _, err := run("ip", "-n", h.netns, "route", "replace", i.addr.String()+"/32", "via", inetUL); err != nil {
		t.Fatal(err)
	}
	i.routed = append(i.routed, h)
}

// sources: ICMP packets received, by source: a host's VTEP, or
// "containers" for any container address (unmasqueraded).
func (i *internet) sources(t *testing.T) map[string]uint64 {
	t.Helper()
	out, err := run("ip", "netns", "exec", i.ns, "iptables", "-L", "INPUT", "-v", "-x", "-n")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	// "       3      252 ACCEPT     icmp --  *      *       198.19.77.12         0.0.0.0/0"
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 9 || f[2] != "ACCEPT" || (f[3] != "icmp" && f[3] != "1") {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		src := f[7]
		if src == "10.77.0.0/16" {
			src = "containers"
		}
		m[src] += n
	}
	return m
}

func hostVTEPs() []string {
	var v []string
	for _, h := range env.hosts {
		v = append(v, h.vtep())
	}
	return v
}
