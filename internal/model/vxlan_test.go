package model

import (
	"net/netip"
	"testing"
)

func TestVXLANName(t *testing.T) {
	for _, tc := range []struct {
		name string
		vni  uint32
		ok   bool
	}{
		{"mnx1", 1, true},
		{"mnx16777215", MaxVNI, true},
		{"mnx0", 0, false},
		{"mnx016", 0, false},
		{"mnx16777216", 0, false},
		{"mnx", 0, false},
		{"mn-4242", 0, false},
		{"mnx42a", 0, false},
	} {
		vni, ok := ParseVXLANName(tc.name)
		if vni != tc.vni || ok != tc.ok {
			t.Errorf("ParseVXLANName(%q) = %d, %v; want %d, %v", tc.name, vni, ok, tc.vni, tc.ok)
		}
		if ok && (VXLANName(vni) != tc.name || ValidateIfName(tc.name) != nil) {
			t.Errorf("VXLANName(%d) = %q, want the valid interface name %q", vni, VXLANName(vni), tc.name)
		}
	}
}

func TestVXLANMTU(t *testing.T) {
	for _, tc := range []struct {
		local string
		want  int
	}{{"198.19.77.1", 1450}, {"::ffff:198.19.77.1", 1450}, {"2001:db8::1", 1430}} {
		if got := (VXLAN{Local: netip.MustParseAddr(tc.local), UnderlayMTU: 1500}).MTU(); got != tc.want {
			t.Errorf("MTU over %s: %d, want %d", tc.local, got, tc.want)
		}
	}
}

func TestVXLANChain(t *testing.T) {
	if got := VXLANChain(DefaultInstance); got != "MYNET-VXLAN" {
		t.Errorf("VXLANChain(default) = %q", got)
	}
	if got, fwd := VXLANChain("other"), ChainsFor("other").Forward; got[:len(got)-len("VXLAN")] != fwd[:len(fwd)-len("FORWARD")] {
		t.Errorf("VXLANChain(other) = %q, not beside %q", got, fwd)
	}
}
