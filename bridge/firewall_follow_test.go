package bridge

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/netutil/nstest"
)

func TestFollowFirewallDecision(t *testing.T) {
	var (
		none = FirewallUse{IPTablesWorks: true, NFTWorks: true}
		ipt  = FirewallUse{IPTablesWorks: true, NFTWorks: true, DockerIPTables: true}
		nft  = FirewallUse{IPTablesWorks: true, NFTWorks: true, DockerNFT: true}
		// Docker 29 starting on nftables writes its table before it
		// removes its iptables chains.
		both = FirewallUse{IPTablesWorks: true, NFTWorks: true, DockerNFT: true, DockerIPTables: true}
		// A host without the iptables binary, and Docker on nftables.
		nftOnly = FirewallUse{NFTWorks: true, DockerNFT: true}
	)
	const I, N = model.FirewallIPTables, model.FirewallNFTables
	for _, tc := range []struct {
		name    string
		flag    string
		found   FirewallUse
		current string
		want    string
	}{
		{"auto, Docker moved to nftables", "auto", nft, I, N},
		{"auto, Docker on nftables, its old chains not yet removed", "auto", both, I, N},
		{"auto, Docker on nftables without an iptables binary", "auto", nftOnly, I, N},
		{"auto, Docker moved back to iptables", "auto", ipt, N, I},
		{"auto, Docker stays on iptables", "auto", ipt, I, I},
		{"auto, Docker stays on nftables", "auto", nft, N, N},
		{"auto, Docker's rules gone (dockerd stopped), on iptables", "auto", none, I, I},
		{"auto, Docker's rules gone (dockerd stopped), on nftables", "auto", none, N, N},
		{"auto, nothing works", "auto", FirewallUse{}, N, N},
		{"empty flag is auto", "", nft, I, N},
		{"explicit iptables never moves", "iptables", nft, I, I},
		{"explicit iptables never moves, both found", "iptables", both, I, I},
		{"explicit nftables never moves", "nftables", ipt, N, N},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := FollowFirewall(tc.flag, tc.current, tc.found)
			if got != tc.want {
				t.Fatalf("FollowFirewall(%q, %q, %+v) = %q (%s), want %q", tc.flag, tc.current, tc.found, got, why, tc.want)
			}
			if (got != tc.current) != (why != "") {
				t.Fatalf("a move must say why, and only a move: %q -> %q, why %q", tc.current, got, why)
			}
		})
	}
}

// followFixture is a network with a container and a published port on the
// iptables backend, beside Docker's iptables chains, and a LAN host.
type followFixture struct {
	d        *Dataplane
	n        model.Network
	ep       model.Endpoint
	ctr, lan netns.NsHandle
}

// dockerIPTablesUp lays out Docker's iptables chains as its iptables
// backend does (DOCKER, DOCKER-USER, the isolation chains, their jumps).
func dockerIPTablesUp(t *testing.T) {
	for _, c := range []string{"DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"} {
		run(t, "iptables", "-N", c)
	}
	run(t, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
	run(t, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
	run(t, "iptables", "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
	run(t, "iptables", "-A", "FORWARD", "-o", "docker0", "-j", "DOCKER")
}

// dockerMovesToNFT does what dockerd 29 does when it starts with
// --firewall-backend=nftables after a run on iptables: it writes its
// nftables table and removes its iptables chains but DOCKER-USER (moby's
// iptabler cleaner). DOCKER-ISOLATION-STAGE-2 stays while mynet's egress
// check still jumps to it: Docker's removal of it fails then.
func dockerMovesToNFT(t *testing.T) {
	run(t, "nft", "-f", "testdata/nft/docker29-bridges-ip.nft")
	run(t, "iptables", "-D", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
	run(t, "iptables", "-D", "FORWARD", "-o", "docker0", "-j", "DOCKER")
	for _, c := range []string{"DOCKER", "DOCKER-ISOLATION-STAGE-1"} {
		run(t, "iptables", "-F", c)
		run(t, "iptables", "-X", c)
	}
}

// dockerMovesToIPTables does what dockerd does when it starts on iptables
// after a run on nftables: it deletes its tables (nftabler.Cleanup) and
// creates its chains.
func dockerMovesToIPTables(t *testing.T) {
	run(t, "nft", "delete", "table", "ip", "docker-bridges")
	run(t, "iptables", "-F", "DOCKER-USER")
	run(t, "iptables", "-D", "FORWARD", "-j", "DOCKER-USER")
	run(t, "iptables", "-X", "DOCKER-USER")
	run(t, "iptables", "-F", "DOCKER-ISOLATION-STAGE-2")
	run(t, "iptables", "-X", "DOCKER-ISOLATION-STAGE-2")
	dockerIPTablesUp(t)
}

// withFollowFixture runs fn with a following Dataplane on iptables beside
// Docker's chains, a network, a container publishing 8081 -> 80 and a LAN
// host, and checks that deleting them leaves nothing of mynet's in either
// backend.
func withFollowFixture(t *testing.T, fn func(f followFixture)) {
	nstest.RequireCommand(t, "nft")
	withDataplane(t, "", func(d *Dataplane) {
		d.follow = true // as serve --firewall auto builds it
		ctx := context.Background()
		run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		dockerIPTablesUp(t)
		f := followFixture{d: d, n: testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")}
		f.lan = lanHost(t, d, "10.1.0.0/24", 0)
		if err := d.EnsureNetwork(ctx, f.n); err != nil {
			t.Fatal(err)
		}
		ctrIP := netip.MustParseAddr("10.1.0.2")
		f.ep = testEndpoint(f.n, eid1)
		f.ep.Addresses = []netip.Addr{ctrIP}
		f.ctr = plugContainer(t, d, f.ep)
		defaultRoute(t, f.ctr, "10.1.0.1")
		f.ep.Ports = []model.PortMapping{{Proto: "tcp", HostPort: 8081, HostPortEnd: 8081, ContainerIP: ctrIP, Port: 80}}
		if err := d.EnsurePorts(ctx, f.n, f.ep, f.ep.Ports); err != nil {
			t.Fatal(err)
		}
		listen(t, f.ctr, "10.1.0.2:80")
		listen(t, f.lan, "198.18.0.2:7000")
		f.expectTraffic(t, "on iptables")

		fn(f)

		if err := d.RemovePorts(ctx, f.ep, f.ep.Ports); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteEndpoint(ctx, f.ep); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, f.n); err != nil {
			t.Fatal(err)
		}
		expectNoRules(t, "after deleting everything")
	})
}

// follow takes a fingerprint, as each pass does first, and runs the
// follow step with the fixture's network and endpoint.
func (f followFixture) follow(t *testing.T) (from, to string, err error) {
	t.Helper()
	if _, err := f.d.Fingerprint(); err != nil {
		t.Fatal(err)
	}
	from, to, why, err := f.d.FollowFirewall(context.Background(), func() ([]model.Network, []model.Endpoint) {
		return []model.Network{f.n}, []model.Endpoint{f.ep}
	})
	t.Logf("follow: %q -> %q (%s), %v", from, to, why, err)
	return from, to, err
}

// expectTraffic checks the published port from the LAN and the
// container's egress to the LAN.
func (f followFixture) expectTraffic(t *testing.T, when string) {
	t.Helper()
	if !dialFrom(t, f.lan, "198.18.0.1:8081") {
		t.Errorf("%s: the LAN host did not reach the published port", when)
	}
	if !dialFrom(t, f.ctr, "198.18.0.2:7000") {
		t.Errorf("%s: the container did not reach the LAN host", when)
	}
}

// mynetNFT is this instance's nftables tables as nft lists them.
func mynetNFT(t *testing.T) string {
	table := model.NFTTableName("mynet-test")
	return nftList(t, "ip", table) + nftList(t, "ip6", table)
}

func expectNoRules(t *testing.T, when string) {
	t.Helper()
	if save := iptablesSave(t); strings.Contains(save, "MYNET") {
		t.Errorf("%s: mynet's chains in iptables:\n%s", when, save)
	}
	if nft := mynetNFT(t); nft != "" {
		t.Errorf("%s: mynet's nftables tables:\n%s", when, nft)
	}
}

// TestFollowFirewall restarts "dockerd" on nftables under a running
// network (Docker 29's table replaces its iptables chains) and runs the
// reconcile's follow step: mynet's rules are then in nftables only, the
// published port and egress work, and nothing of mynet's is left in
// iptables; then back to iptables the same way.
func TestFollowFirewall(t *testing.T) {
	withFollowFixture(t, func(f followFixture) {
		if _, to, err := f.follow(t); err != nil || to != "" {
			t.Fatalf("with Docker on iptables, follow moved to %q, %v; want nothing", to, err)
		}
		before, err := f.d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		dockerMovesToNFT(t)
		after, err := f.d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		if before[model.DigestFirewall] == after[model.DigestFirewall] {
			t.Errorf("Docker's move to nftables left digest %q unchanged: no pass would look", model.DigestFirewall)
		}
		from, to, err := f.follow(t)
		if err != nil || from != model.FirewallIPTables || to != model.FirewallNFTables || f.d.FirewallBackend() != model.FirewallNFTables {
			t.Fatalf("follow to nftables: %q -> %q, %v; backend now %s", from, to, err, f.d.FirewallBackend())
		}
		if save := iptablesSave(t); strings.Contains(save, "MYNET") {
			t.Errorf("mynet's chains left in iptables after the move:\n%s", save)
		}
		if nft := mynetNFT(t); !strings.Contains(nft, nid1) || !strings.Contains(nft, eid1) {
			t.Errorf("mynet's nftables table lacks the network or the endpoint's port:\n%s", nft)
		}
		// Docker's removal of its last chain works now that mynet's
		// egress check no longer jumps to it.
		run(t, "iptables", "-X", "DOCKER-ISOLATION-STAGE-2")
		run(t, "iptables", "-N", "DOCKER-ISOLATION-STAGE-2")
		f.expectTraffic(t, "after the move to nftables")
		if _, to, err := f.follow(t); err != nil || to != "" {
			t.Fatalf("a second follow on nftables moved to %q, %v; want nothing", to, err)
		}

		dockerMovesToIPTables(t)
		from, to, err = f.follow(t)
		if err != nil || from != model.FirewallNFTables || to != model.FirewallIPTables || f.d.FirewallBackend() != model.FirewallIPTables {
			t.Fatalf("follow back to iptables: %q -> %q, %v; backend now %s", from, to, err, f.d.FirewallBackend())
		}
		if nft := mynetNFT(t); nft != "" {
			t.Errorf("mynet's nftables table left after the move back:\n%s", nft)
		}
		if save := iptablesSave(t); !strings.Contains(save, nid1) || !strings.Contains(save, eid1) {
			t.Errorf("mynet's iptables rules lack the network or the endpoint's port:\n%s", save)
		}
		f.expectTraffic(t, "after the move back to iptables")
	})
}

// TestFollowFirewallFailureKeepsOldBackend fails the move after the new
// backend's rules are in (a failpoint): the old backend stays in use with
// its rules as they were and traffic working, and nothing is left in the
// new one. The next step, without the failure, moves.
func TestFollowFirewallFailureKeepsOldBackend(t *testing.T) {
	withFollowFixture(t, func(f followFixture) {
		dockerMovesToNFT(t)
		before := iptablesSave(t)
		if err := failpoint.Enable("bridge.firewall.follow=error"); err != nil {
			t.Fatal(err)
		}
		_, to, err := f.follow(t)
		failpoint.Enable("")
		if err == nil || to != "" {
			t.Fatalf("follow with its failpoint set: moved to %q, %v; want an error and no move", to, err)
		}
		if !strings.Contains(err.Error(), "iptables to nftables") {
			t.Errorf("the error does not name both backends: %v", err)
		}
		if got := f.d.FirewallBackend(); got != model.FirewallIPTables {
			t.Errorf("after a failed move the backend is %s, want iptables", got)
		}
		if nft := mynetNFT(t); nft != "" {
			t.Errorf("a failed move left mynet's table in nftables:\n%s", nft)
		}
		if after := iptablesSave(t); after != before {
			t.Errorf("a failed move changed iptables:\n--- before\n%s--- after\n%s", before, after)
		}
		f.expectTraffic(t, "after a failed move")

		if _, to, err := f.follow(t); err != nil || to != model.FirewallNFTables {
			t.Fatalf("the retry moved to %q, %v; want nftables", to, err)
		}
		f.expectTraffic(t, "after the retried move")
		run(t, "nft", "delete", "table", "ip", "docker-bridges")
	})
}
