package doctor

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/mynet/mynet/internal/peers"
)

func TestCompareEntries(t *testing.T) {
	vb := netip.MustParseAddr("198.19.77.2")
	vc := netip.MustParseAddr("198.19.77.3")
	p := peers.Peer{IP: netip.MustParseAddr("10.77.0.3"), MAC: "02:42:0a:4d:00:03", VTEP: vb}
	tests := []struct {
		name           string
		fdb            map[string]netip.Addr
		neigh          map[netip.Addr]string
		missing, extra []string
	}{
		{"match", map[string]netip.Addr{p.MAC: vb}, map[netip.Addr]string{p.IP: p.MAC}, nil, nil},
		{"neighbour deleted by hand", map[string]netip.Addr{p.MAC: vb}, map[netip.Addr]string{}, []string{"10.77.0.3 02:42:0a:4d:00:03 via 198.19.77.2"}, nil},
		{"FDB at the wrong VTEP", map[string]netip.Addr{p.MAC: vc}, map[netip.Addr]string{p.IP: p.MAC}, []string{"10.77.0.3 02:42:0a:4d:00:03 via 198.19.77.2"}, nil},
		{"stale entries", map[string]netip.Addr{p.MAC: vb, "02:42:0a:4d:00:09": vc},
			map[netip.Addr]string{p.IP: p.MAC, netip.MustParseAddr("10.77.0.9"): "02:42:0a:4d:00:09"},
			nil, []string{"FDB 02:42:0a:4d:00:09 via 198.19.77.3", "neighbour 10.77.0.9 02:42:0a:4d:00:09"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			missing, extra := compareEntries([]peers.Peer{p}, tt.fdb, tt.neigh)
			if !slices.Equal(missing, tt.missing) || !slices.Equal(extra, tt.extra) {
				t.Errorf("missing %q extra %q; want %q %q", missing, extra, tt.missing, tt.extra)
			}
		})
	}
}
