package driver_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/cluster/etcdtest"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
	"github.com/mynet/mynet/state"
)

const kNet = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"

// TestClusterKernel: against a real etcd and in a throwaway namespace, a
// cluster create joins the store and builds the bridge with its VXLAN
// device, an address is claimed and released in the store, and the delete
// removes the device and the network from the store; with the store
// unreachable a create fails naming it and leaves no link. Everything the
// kernel sees runs on the goroutine locked into the namespace; the etcd
// client's own goroutines reach etcd on the host's loopback.
func TestClusterKernel(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "iptables")
	srv := etcdtest.Start(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store := kernelStore(t, srv.Endpoint, log)
	down := kernelStore(t, "127.0.0.1:1", log) // nothing listens there
	ctx := context.Background()
	nstest.Run(t, func() {
		run := func(args ...string) string {
			out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
			return string(out)
		}
		run("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
		run("ip", "addr", "add", "198.19.77.10/24", "dev", "ul0")
		run("ip", "link", "set", "ul0", "up")
		dp, err := bridge.New(bridge.Config{Instance: "mynet-c1test", Log: log, Firewall: model.FirewallIPTables})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		st, err := state.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		vx := model.VXLAN{Local: netip.MustParseAddr("198.19.77.10"), UnderlayMTU: 1500}
		newDriver := func(s driver.ClusterStore) *driver.Driver {
			return driver.New(driver.Config{Log: log, Store: st, Dataplane: dp, Cluster: &driver.ClusterConfig{
				Store: s, HostID: "host-a", VXLAN: vx, Queue: st, JoinTimeout: 3 * time.Second}})
		}
		checkDown(t, ctx, newDriver(down), run)
		d := newDriver(store)
		vni := createCluster(t, ctx, d, "10.77.0.0/24")
		l, err := netlink.LinkByName(model.VXLANName(vni))
		if err != nil {
			t.Fatalf("VXLAN device: %v", err)
		}
		br, _ := netlink.LinkByName(model.BridgeName(kNet))
		if br == nil || l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().MTU != 1450 {
			t.Errorf("VXLAN device %s: master %d, MTU %d; want the bridge, 1450", l.Attrs().Name, l.Attrs().MasterIndex, l.Attrs().MTU)
		}
		a, err := d.RequestAddress(ctx, driver.AddressRequest{PoolID: "10.77.0.0/24", Owner: "02:aa:00:00:00:01"})
		if err != nil {
			t.Fatal(err)
		}
		if claims, _, err := store.Claims(ctx, "appnet"); err != nil || len(claims) != 1 || claims[0].IP != a.Addr() || claims[0].MAC != "02:aa:00:00:00:01" {
			t.Errorf("claims after RequestAddress: %+v, %v", claims, err)
		}
		if err := d.ReleaseAddress(ctx, "10.77.0.0/24", a.Addr()); err != nil {
			t.Fatal(err)
		}
		if claims, _, err := store.Claims(ctx, "appnet"); err != nil || len(claims) != 0 {
			t.Errorf("claims after ReleaseAddress: %+v, %v", claims, err)
		}
		if err := d.DeleteNetwork(ctx, kNet); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Network(ctx, "appnet"); !errors.Is(err, cluster.ErrNetworkNotFound) {
			t.Errorf("store after the last host's delete: %v", err)
		}
		_ = d.ReleaseAddress(ctx, "10.77.0.0/24", netip.MustParseAddr("10.77.0.1"))
		_ = d.ReleasePool("10.77.0.0/24")
		dp.Sync()
		if links, rules := run("ip", "-br", "link"), run("iptables-save"); strings.Contains(links, "mn") || strings.Contains(strings.ToUpper(rules), "MYNET") {
			t.Errorf("left behind in the namespace:\n%s\n%s", links, rules)
		}
	})
}

// checkDown: with the store unreachable a create fails naming the store
// within the join's bound, and leaves no link and no record.
func checkDown(t *testing.T, ctx context.Context, d *driver.Driver, run func(...string) string) {
	t.Helper()
	err := createClusterErr(ctx, d, "10.78.0.0/24")
	if err == nil || !strings.Contains(err.Error(), "cluster store etcd at 127.0.0.1:1") {
		t.Fatalf("create with the store down: %v; want an error naming the store", err)
	}
	if links := run("ip", "-br", "link"); strings.Contains(links, "mn") {
		t.Errorf("links left by the failed create:\n%s", links)
	}
	if n := len(d.Dump().Networks); n != 0 {
		t.Errorf("%d network records left by the failed create", n)
	}
	_ = d.ReleaseAddress(ctx, "10.78.0.0/24", netip.MustParseAddr("10.78.0.1"))
	_ = d.ReleasePool("10.78.0.0/24")
}

func createCluster(t *testing.T, ctx context.Context, d *driver.Driver, subnet string) uint32 {
	t.Helper()
	if err := createClusterErr(ctx, d, subnet); err != nil {
		t.Fatal(err)
	}
	for _, n := range d.Dump().Networks {
		return n.VNI
	}
	t.Fatal("no network after the create")
	return 0
}

// createClusterErr makes the engine's calls of a cluster network create.
func createClusterErr(ctx context.Context, d *driver.Driver, subnet string) error {
	pool, err := d.RequestPool(ctx, driver.PoolRequest{Subnet: netip.MustParsePrefix(subnet)})
	if err != nil {
		return err
	}
	gw, err := d.RequestAddress(ctx, driver.AddressRequest{PoolID: pool, Gateway: true})
	if err != nil {
		return err
	}
	return d.CreateNetwork(ctx, driver.NetworkConfig{ID: kNet, BridgeName: model.BridgeName(kNet), ICC: true, Masquerade: true,
		AntiSpoofing: true, EnableIPv4: true, Cluster: "appnet",
		IPv4: []driver.SubnetConfig{{Pool: netip.MustParsePrefix(pool), Gateway: gw}}})
}

func kernelStore(t *testing.T, endpoint string, log *slog.Logger) *cluster.Store {
	t.Helper()
	s, err := cluster.New(cluster.Config{Endpoints: []string{endpoint}, RequestTimeout: 2 * time.Second,
		Root: "/t/" + t.Name() + model.DefaultClusterRoot, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
