package bridge

import (
	"context"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
)

func TestChooseFirewall(t *testing.T) {
	for _, tc := range []struct {
		flag    string
		use     FirewallUse
		want    string
		wantErr bool
	}{
		{"auto", FirewallUse{DockerNFT: true, DockerIPTables: true, IPTablesWorks: true, NFTWorks: true}, model.FirewallNFTables, false},
		{"auto", FirewallUse{DockerIPTables: true, IPTablesWorks: true, NFTWorks: true}, model.FirewallIPTables, false},
		{"auto", FirewallUse{IPTablesWorks: true, NFTWorks: true}, model.FirewallIPTables, false},
		{"auto", FirewallUse{NFTWorks: true}, model.FirewallNFTables, false},
		{"", FirewallUse{}, "", true},
		{"iptables", FirewallUse{DockerNFT: true}, model.FirewallIPTables, false},
		{"nftables", FirewallUse{DockerIPTables: true}, model.FirewallNFTables, false},
		{"nft", FirewallUse{IPTablesWorks: true}, "", true},
	} {
		got, why, err := ChooseFirewall(tc.flag, tc.use)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ChooseFirewall(%q, %+v) = %q (%s), %v; want %q, error %v", tc.flag, tc.use, got, why, err, tc.want, tc.wantErr)
		}
	}
}

// TestFirewallSwitch runs a network on one backend, then starts the
// other as serve would after dockerd changed backends: detection follows
// Docker's table, and the first backend's rules are gone, nothing else.
func TestFirewallSwitch(t *testing.T) {
	nstest.RequireCommand(t, "nft")
	withDataplane(t, "", func(ipt *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := ipt.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if u := DetectFirewalls("mynet-test"); u.Own() != model.FirewallIPTables || u.Docker() != "" {
			t.Fatalf("after an iptables network: %+v", u)
		}
		run(t, "nft", "-f", "testdata/nft/docker29-bridges-ip.nft")
		u := DetectFirewalls("mynet-test")
		if got, _, _ := ChooseFirewall("auto", u); got != model.FirewallNFTables {
			t.Fatalf("with Docker's nftables table, auto chose %q (%+v)", got, u)
		}
		nl, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		nft, err := New(Config{Instance: "mynet-test", Netlink: nl, Firewall: model.FirewallNFTables})
		if err != nil {
			t.Fatal(err)
		}
		defer nft.Close()
		if err := nft.RemoveOtherFirewall(); err != nil {
			t.Fatal(err)
		}
		if save := iptablesSave(t); strings.Contains(save, "MYNET") {
			t.Fatalf("mynet's iptables rules left after the switch:\n%s", save)
		}
		if err := nft.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		// And back: the iptables Dataplane removes the nftables table.
		if err := ipt.RemoveOtherFirewall(); err != nil {
			t.Fatal(err)
		}
		if u := DetectFirewalls("mynet-test"); u.OwnNFT || !u.DockerNFT {
			t.Fatalf("after switching back: %+v, want no table of mynet's and Docker's untouched", u)
		}
		if err := ipt.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}
