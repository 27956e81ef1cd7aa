package bridge

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// TestPlanPeers: what SyncPeers writes and deletes for a device's entries
// and the peers wanted, and the contradictions it refuses.
func TestPlanPeers(t *testing.T) {
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{2, 0x42, 0, 0, 0, b} }
	ip := func(b byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 77, 0, b}) }
	vtep := func(b byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 77, b}) }
	v6 := netip.MustParseAddr("fd00::5")
	peer := func(a netip.Addr, m net.HardwareAddr, v netip.Addr) model.VXLANPeer {
		return model.VXLANPeer{IP: a, MAC: m, VTEP: v}
	}
	have := VXLANEntries{
		FDB:   map[string]netip.Addr{mac(5).String(): vtep(2), mac(6).String(): vtep(3)},
		Neigh: map[netip.Addr]string{ip(5): mac(5).String(), ip(6): mac(6).String()},
	}
	for _, tc := range []struct {
		name    string
		want    []model.VXLANPeer
		plan    string // fdb+ neigh+ / fdb- neigh-
		wantErr string
	}{
		{name: "in sync", want: []model.VXLANPeer{peer(ip(5), mac(5), vtep(2)), peer(ip(6), mac(6), vtep(3))}, plan: "/"},
		{name: "all gone", plan: "/02:42:00:00:00:05 02:42:00:00:00:06 10.77.0.5 10.77.0.6"},
		{name: "moved host", want: []model.VXLANPeer{peer(ip(5), mac(5), vtep(9)), peer(ip(6), mac(6), vtep(3))}, plan: "02:42:00:00:00:05>198.19.77.9/"},
		{name: "address reused", want: []model.VXLANPeer{peer(ip(5), mac(7), vtep(2)), peer(ip(6), mac(6), vtep(3))}, plan: "02:42:00:00:00:07>198.19.77.2 10.77.0.5>02:42:00:00:00:07/02:42:00:00:00:05"},
		{name: "second address of an endpoint", want: []model.VXLANPeer{peer(ip(5), mac(5), vtep(2)), peer(v6, mac(5), vtep(2)), peer(ip(6), mac(6), vtep(3))}, plan: "fd00::5>02:42:00:00:00:05/"},
		{name: "one MAC at two VTEPs", want: []model.VXLANPeer{peer(ip(5), mac(5), vtep(2)), peer(ip(8), mac(5), vtep(3))}, wantErr: "MAC 02:42:00:00:00:05 is announced at two VTEPs"},
		{name: "one address with two MACs", want: []model.VXLANPeer{peer(ip(5), mac(5), vtep(2)), peer(ip(5), mac(8), vtep(2))}, wantErr: "address 10.77.0.5 is announced with two MACs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := planPeers(have, tc.want)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var add, del []string
			for _, f := range p.fdbSet {
				add = append(add, f.mac+">"+f.vtep.String())
			}
			for _, n := range p.neighSet {
				add = append(add, n.IP.String()+">"+n.MAC.String())
			}
			for _, f := range p.fdbDel {
				del = append(del, f.mac)
			}
			for _, ip := range p.neighDel {
				del = append(del, ip.String())
			}
			if got := strings.Join(add, " ") + "/" + strings.Join(del, " "); got != tc.plan {
				t.Errorf("plan %q, want %q", got, tc.plan)
			}
		})
	}
}
