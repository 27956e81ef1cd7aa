package bridge

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
)

// TestEnsureVXLAN: what EnsureVXLAN refuses leaves the host as it was; a
// device it created and could not finish goes again; a foreign link of
// the name is never touched; a device of the network with another local
// VTEP is made again; a good one is made as asked, and RemoveVXLAN takes
// it away.
func TestEnsureVXLAN(t *testing.T) {
	local := netip.MustParseAddr("198.19.77.1")
	good := model.VXLAN{VNI: testVNI, Local: local, UnderlayMTU: 1500}
	for _, tc := range []struct {
		name    string
		mtu     int // the network's; 0 keeps testNetwork's 1450
		vx      model.VXLAN
		prepare func(t *testing.T, d *Dataplane, n model.Network)
		failAt  string
		wantErr string // "" for success
	}{
		{name: "created", vx: good},
		{name: "no-network-mtu", mtu: -1, vx: good, wantErr: "no MTU set"},
		{name: "network-mtu-above", mtu: 1500, vx: good, wantErr: "set com.docker.network.driver.mtu to 1450 or less"},
		{name: "ipv6-underlay-mtu", vx: model.VXLAN{VNI: testVNI, Local: netip.MustParseAddr("2001:db8::1"), UnderlayMTU: 1500}, wantErr: "leaves of the underlay's 1500; set com.docker.network.driver.mtu to 1430"},
		{name: "vni-zero", vx: model.VXLAN{Local: local, UnderlayMTU: 1500}, wantErr: "VNI 0 is out of range"},
		{name: "vni-too-large", vx: model.VXLAN{VNI: model.MaxVNI + 1, Local: local, UnderlayMTU: 1500}, wantErr: "out of range"},
		{name: "no-local", vx: model.VXLAN{VNI: testVNI, UnderlayMTU: 1500}, wantErr: "local VTEP: no address given"},
		{name: "multicast-local", vx: model.VXLAN{VNI: testVNI, Local: netip.MustParseAddr("239.1.1.1"), UnderlayMTU: 1500}, wantErr: "not a unicast address"},
		{name: "bad-port", vx: model.VXLAN{VNI: testVNI, Local: local, UnderlayMTU: 1500, Port: 70000}, wantErr: "port 70000 is out of range"},
		{name: "tiny-underlay", mtu: 1000, vx: model.VXLAN{VNI: testVNI, Local: local, UnderlayMTU: 100}, wantErr: "below the 68"},
		{name: "fails-after-creation", vx: good, failAt: "bridge.vxlan.created=error", wantErr: "bridge.vxlan.created"},
		{name: "foreign-link", vx: good, wantErr: "is not mynet's VXLAN device", prepare: func(t *testing.T, d *Dataplane, _ model.Network) {
			if err := d.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: model.VXLANName(testVNI)}}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "other-local-made-again", vx: good, prepare: func(t *testing.T, d *Dataplane, n model.Network) {
			old := good
			old.Local = netip.MustParseAddr("198.19.77.42")
			if err := d.EnsureVXLAN(context.Background(), n, old); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				n := testNetwork(nid1, "10.77.0.0/24", "10.77.0.1/24")
				switch {
				case tc.mtu < 0:
					n.MTU = 0
				case tc.mtu > 0:
					n.MTU = tc.mtu
				}
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if tc.prepare != nil {
					tc.prepare(t, d, n)
				}
				before := snapshot(t)
				if err := failpoint.Enable(tc.failAt); err != nil {
					t.Fatal(err)
				}
				err := d.EnsureVXLAN(ctx, n, tc.vx)
				_ = failpoint.Enable("")
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
					}
					if after := snapshot(t); after != before {
						t.Fatalf("a refused EnsureVXLAN changed the host:\n--- before\n%s--- after\n%s", before, after)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				checkVXLANDevice(t, d, n, tc.vx)
				if err := d.RemoveVXLAN(ctx, n, tc.vx.VNI); err != nil {
					t.Fatal(err)
				}
				if _, err := d.nl.LinkByName(model.VXLANName(tc.vx.VNI)); !isNotFound(err) {
					t.Fatalf("VXLAN device left after RemoveVXLAN: %v", err)
				}
				if err := d.RemoveVXLAN(ctx, n, tc.vx.VNI); err != nil {
					t.Fatalf("second RemoveVXLAN: %v", err)
				}
			})
		})
	}
}

// checkVXLANDevice checks the device as the kernel has it.
func checkVXLANDevice(t *testing.T, d *Dataplane, n model.Network, vx model.VXLAN) {
	t.Helper()
	l, err := d.nl.LinkByName(model.VXLANName(vx.VNI))
	if err != nil {
		t.Fatal(err)
	}
	br, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s", l.Attrs().Name, l.Type())
	}
	a := v.Attrs()
	switch {
	case v.VxlanId != int(vx.VNI), !v.SrcAddr.Equal(net.IP(vx.Local.AsSlice())), v.Port != model.DefaultVXLANPort:
		t.Errorf("device has VNI %d local %s port %d, want %d %s %d", v.VxlanId, v.SrcAddr, v.Port, vx.VNI, vx.Local, model.DefaultVXLANPort)
	case v.Learning || !v.Proxy:
		t.Errorf("device has learning %v proxy %v, want off and on", v.Learning, v.Proxy)
	case a.MTU != 1450 || a.MasterIndex != br.Attrs().Index || a.Flags&net.FlagUp == 0:
		t.Errorf("device has MTU %d master %d up %v, want 1450, %d (the bridge), up", a.MTU, a.MasterIndex, a.Flags&net.FlagUp != 0, br.Attrs().Index)
	case a.Alias != d.tag(model.KindNetwork, n.ID):
		t.Errorf("device is tagged %q, want the network's tag", a.Alias)
	}
	links, err := d.TaggedLinks()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(links, func(l model.TaggedLink) bool { return l.Name == a.Name && l.Tag.ID == n.ID }) {
		t.Errorf("TaggedLinks does not list %s as network %s's: %v", a.Name, model.Short(n.ID), links)
	}
}

// TestVXLANOrphan: the orphan sweep keeps the device of a known network
// and deletes that of an unknown one, as it does bridges.
func TestVXLANOrphan(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.77.0.0/24", "10.77.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := d.EnsureVXLAN(ctx, n, model.VXLAN{VNI: testVNI, Local: netip.MustParseAddr("198.19.77.1"), UnderlayMTU: 1500}); err != nil {
			t.Fatal(err)
		}
		name := model.VXLANName(testVNI)
		if err := d.RemoveOrphans(ctx, map[string]bool{nid1: true}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.nl.LinkByName(name); err != nil {
			t.Fatalf("the sweep deleted the device of a known network: %v", err)
		}
		if err := d.RemoveOrphans(ctx, map[string]bool{}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.nl.LinkByName(name); !isNotFound(err) {
			t.Fatalf("the device of an unknown network survived the sweep: %v", err)
		}
	})
}

// TestSyncPeersAtScale: a relist of 1,000 remote endpoints onto an empty
// device, then a sync that changes one, then a repeat that changes
// nothing. The times are logged, not asserted (the bench phase pins them).
func TestSyncPeersAtScale(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.77.0.0/20", "10.77.0.1/20")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := d.EnsureVXLAN(ctx, n, model.VXLAN{VNI: testVNI, Local: netip.MustParseAddr("198.19.77.1"), UnderlayMTU: 1500}); err != nil {
			t.Fatal(err)
		}
		var want []model.VXLANPeer
		for i := range 1000 {
			want = append(want, model.VXLANPeer{
				IP:   netip.AddrFrom4([4]byte{10, 77, byte(2 + i/250), byte(1 + i%250)}),
				MAC:  net.HardwareAddr{0x02, 0x42, 0, 0, byte(i >> 8), byte(i)},
				VTEP: netip.AddrFrom4([4]byte{198, 19, 77, byte(2 + i%10)}),
			})
		}
		for _, step := range []struct {
			name             string
			change           func()
			written, deleted int
		}{
			{"relist of 1000", func() {}, 2000, 0},
			{"one endpoint moved, one gone", func() { want[0].VTEP = netip.MustParseAddr("198.19.77.99"); want = want[:999] }, 1, 2},
			{"repeat", func() {}, 0, 0},
		} {
			step.change()
			start := time.Now()
			written, deleted, err := d.SyncPeers(ctx, n, testVNI, want)
			took := time.Since(start)
			if err != nil || written != step.written || deleted != step.deleted {
				t.Fatalf("%s: wrote %d, deleted %d (%v); want %d, %d", step.name, written, deleted, err, step.written, step.deleted)
			}
			t.Logf("%s: %v", step.name, took)
		}
		e, err := d.VXLANEntries(ctx, n, testVNI)
		if err != nil {
			t.Fatal(err)
		}
		if missing := e.Missing(want); len(missing) > 0 || len(e.Peers()) != len(want) {
			t.Fatalf("after the syncs: %d missing (%v...), %d peers read back, want %d", len(missing), missing[:min(3, len(missing))], len(e.Peers()), len(want))
		}
	})
}
