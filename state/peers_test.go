package state

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

func TestPeersLocalCopy(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:42:0a:4d:00:05")
	p := model.VXLANPeer{IP: netip.MustParseAddr("10.77.0.5"), MAC: mac, VTEP: netip.MustParseAddr("198.19.77.2")}
	if _, found, err := s.LoadPeers("appnet"); err != nil || found {
		t.Fatalf("LoadPeers of a new state: found %v, err %v; want nothing", found, err)
	}
	if err := s.DeletePeers("appnet"); err != nil {
		t.Fatalf("DeletePeers of nothing: %v", err)
	}
	if err := s.SavePeers("appnet", []model.VXLANPeer{p}); err != nil {
		t.Fatal(err)
	}
	if err := s.SavePeers("empty", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name      string
		want      []model.VXLANPeer
		wantFound bool
	}{
		{"appnet", []model.VXLANPeer{p}, true},
		{"empty", nil, true}, // saved empty: the store said there is no peer
		{"other", nil, false},
	}
	for _, tt := range tests {
		got, found, err := s.LoadPeers(tt.name)
		if err != nil || found != tt.wantFound || !slices.EqualFunc(got, tt.want, func(a, b model.VXLANPeer) bool { return a.String() == b.String() }) {
			t.Errorf("LoadPeers(%s) = %v, %v, %v; want %v, %v", tt.name, got, found, err, tt.want, tt.wantFound)
		}
	}
	if err := s.DeletePeers("appnet"); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.LoadPeers("appnet"); err != nil || found {
		t.Errorf("after DeletePeers: found %v, err %v", found, err)
	}
}
