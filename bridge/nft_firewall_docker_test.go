package bridge

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// TestNFTBesideDocker29 lays out Docker 29's nftables tables for a Docker
// bridge network (testdata/nft/docker29-bridges-*.nft, from moby's
// nftabler) beside a mynet network on the nftables backend, and proves
// with real connections between namespaces that both tables' verdicts
// hold: isolation both ways, although each table accepts what the other
// drops; egress and published ports of both; direct-routing protection.
// In gateway mode nat-unprotected Docker's table accepts every connection
// into its bridge: only mynet's drop keeps mynet's containers out.
//
// mynet's network runs in gateway mode nat and nat-unprotected: in nat
// its direct-routing drop already stops every new connection from outside
// the bridge, in nat-unprotected only the network's ingress chain keeps
// Docker's containers out (the LAN gets in). A Docker bridge named with
// com.docker.network.bridge.name ("apps0", no br- prefix) is known from
// Docker's table, where its chains name it.
func TestNFTBesideDocker29(t *testing.T) {
	for _, layout := range []string{"docker29-bridges-ip", "docker29-bridges-unprotected-ip"} {
		for _, bridge := range []string{"br-dummy", "apps0"} {
			for _, unprotected := range []bool{false, true} {
				name := layout + "/" + bridge + "/mynet-nat"
				if unprotected {
					name += "-unprotected"
				}
				t.Run(name, func(t *testing.T) { testNFTBesideDocker(t, "testdata/nft/"+layout+".nft", bridge, unprotected) })
			}
		}
	}
}

func testNFTBesideDocker(t *testing.T, dockerTable, bridge string, unprotected bool) {
	layout, err := os.ReadFile(dockerTable)
	if err != nil {
		t.Fatal(err)
	}
	dockerTable = filepath.Join(t.TempDir(), "docker.nft")
	if err := os.WriteFile(dockerTable, bytes.ReplaceAll(layout, []byte("br-dummy"), []byte(bridge)), 0o644); err != nil {
		t.Fatal(err)
	}
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		lan := lanHost(t, d, "10.1.0.0/24", 0)
		dockerCtr := dockerBridge(t, d, bridge)
		run(t, "nft", "-f", dockerTable)
		before := nftRuleset(t)

		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.Unprotected4 = unprotected
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		ctrIP := netip.MustParseAddr("10.1.0.2")
		ep := testEndpoint(n, eid1)
		ep.Addresses = []netip.Addr{ctrIP}
		ctr := plugContainer(t, d, ep)
		defaultRoute(t, ctr, "10.1.0.1")
		ports := []model.PortMapping{{Proto: "tcp", HostPort: 8081, HostPortEnd: 8081, ContainerIP: ctrIP, Port: 80}}
		if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
			t.Fatal(err)
		}
		listen(t, ctr, "10.1.0.2:80")
		listen(t, ctr, "10.1.0.2:81")
		listen(t, dockerCtr, "192.168.0.2:80")
		listen(t, dockerCtr, "192.168.0.2:81")
		listen(t, lan, "198.18.0.2:7000")

		for _, c := range []struct {
			name string
			from netns.NsHandle
			addr string
			want bool
		}{
			// Into mynet's network from Docker's: Docker's out chain
			// accepts ("OUTGOING"), mynet's in chain drops.
			{"Docker container to mynet container, published port", dockerCtr, "10.1.0.2:80", false},
			{"Docker container to mynet container, unpublished port", dockerCtr, "10.1.0.2:81", false},
			// Into Docker's network from mynet's: Docker's in chain accepts
			// its published container port by address; mynet's out chain
			// drops new connections into Docker's bridges.
			{"mynet container to Docker container, Docker-published port", ctr, "192.168.0.2:80", false},
			{"mynet container to Docker container, unpublished port", ctr, "192.168.0.2:81", false},
			// Egress of both, through both tables.
			{"mynet container to the LAN", ctr, "198.18.0.2:7000", true},
			{"Docker container to the LAN", dockerCtr, "198.18.0.2:7000", true},
			// Published ports, through the host's address.
			{"LAN to mynet's published port", lan, "198.18.0.1:8081", true},
			{"LAN to Docker's published port", lan, "198.18.0.1:8080", true},
			{"Docker container to mynet's published port", dockerCtr, "198.18.0.1:8081", true},
			// Direct routing to mynet's subnet from the LAN.
			{"LAN to mynet container directly, published port", lan, "10.1.0.2:80", unprotected},
			{"LAN to mynet container directly, unpublished port", lan, "10.1.0.2:81", unprotected},
		} {
			if got := dialFrom(t, c.from, c.addr); got != c.want {
				t.Errorf("%s (%s): connected=%v, want %v", c.name, c.addr, got, c.want)
			}
		}
		// The host's own 127.0.0.1 reaches the published port
		// (route_localnet and the loopback masquerade).
		if c, err := net.DialTimeout("tcp", "127.0.0.1:8081", dialBound); err != nil {
			t.Errorf("host to 127.0.0.1:8081: %v, want a connection", err)
		} else {
			c.Close()
		}

		if err := d.RemovePorts(ctx, ep, ports); err != nil {
			t.Fatal(err)
		}
		if dialFrom(t, lan, "198.18.0.1:8081") {
			t.Errorf("LAN to an unpublished port connected")
		}
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if after := nftRuleset(t); after != before {
			t.Fatalf("ruleset changed:\n--- before\n%s--- after\n%s", before, after)
		}
	})
}

// TestNFTFailedBatchChangesNothing makes the kernel reject a batch
// halfway (a second network claims a bridge name the first one's jumps
// already map elsewhere) and a publish fail after its batch (a
// failpoint), and checks the ruleset is what it was.
func TestNFTFailedBatchChangesNothing(t *testing.T) {
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		ep, ports := nftTestPorts(n)
		if err := d.fw4.ensurePorts(ctx, n, ep, ports[:1], &netutil.Undo{}); err != nil {
			t.Fatal(err)
		}
		before := nftRuleset(t)

		clash := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
		clash.Bridge = n.Bridge
		err := d.fw4.ensureNetwork(ctx, clash, &netutil.Undo{})
		if err == nil {
			t.Fatal("a second network on the first one's bridge was accepted")
		}
		t.Logf("rejected as expected: %v", err)
		if after := nftRuleset(t); after != before {
			t.Fatalf("a rejected batch changed the ruleset:\n--- before\n%s--- after\n%s", before, after)
		}

		if err := failpoint.Enable("bridge.ports=error"); err != nil {
			t.Fatal(err)
		}
		err = d.EnsurePorts(ctx, n, ep, ports)
		failpoint.Enable("")
		if err == nil {
			t.Fatal("EnsurePorts with its failpoint set succeeded")
		}
		if after := nftRuleset(t); after != before {
			t.Fatalf("a failed publish left elements behind:\n--- before\n%s--- after\n%s", before, after)
		}
	})
}

const dialBound = 2 * time.Second

// dockerBridge makes what Docker's bridge driver would for the network of
// the Docker table: bridge name with 192.168.0.1/24 and a container
// namespace at 192.168.0.2 (test namespaces only).
func dockerBridge(t *testing.T, d *Dataplane, name string) netns.NsHandle {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := d.nl.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.nl.LinkDel(br) })
	if err := d.nl.AddrAdd(br, mustAddr(t, "192.168.0.1/24")); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethdock0", MasterIndex: br.Index}, PeerName: "vethdock1"}
	if err := d.nl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.nl.LinkDel(veth) })
	for _, l := range []netlink.Link{br, veth} {
		if err := d.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	ns := newNetns(t)
	peer, err := d.nl.LinkByName("vethdock1")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.nl.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	inNetns(t, ns, func() {
		h, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		l, err := h.LinkByName("vethdock1")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, mustAddr(t, "192.168.0.2/24")); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	})
	defaultRoute(t, ns, "192.168.0.1")
	return ns
}
