package model

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestValidateClusterName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"appnet", true}, {"a", true}, {"App-1.prod_x", true}, {"0net", true},
		{"", false}, {"-net", false}, {".net", false}, {"a/b", false}, {"a b", false},
		{"ünet", false}, {string(make([]byte, 64)), false},
		{"a23456789012345678901234567890123456789012345678901234567890123", true},
		{"a234567890123456789012345678901234567890123456789012345678901234", false},
	} {
		err := ValidateClusterName("cluster network", tc.name)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrInvalidClusterName) {
			t.Errorf("ValidateClusterName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestClusterSpecDiff(t *testing.T) {
	base := ClusterSpec{Name: "app", Subnet: netip.MustParsePrefix("10.77.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.1"), ICC: true}
	for _, tc := range []struct {
		name string
		mod  func(*ClusterSpec)
		want []string
	}{
		{"same", func(*ClusterSpec) {}, nil},
		{"subnet and gateway", func(s *ClusterSpec) {
			s.Subnet, s.Gateway = netip.MustParsePrefix("10.78.0.0/24"), netip.MustParseAddr("10.78.0.1")
		}, []string{"subnet: 10.77.0.0/24 in the cluster, 10.78.0.0/24 here", "gateway: 10.77.0.1 in the cluster, 10.78.0.1 here"}},
		{"ip-range", func(s *ClusterSpec) { s.IPRange = netip.MustParsePrefix("10.77.0.128/25") },
			[]string{"ip-range: none in the cluster, 10.77.0.128/25 here"}},
		{"flags", func(s *ClusterSpec) { s.Internal, s.ICC, s.MTU = true, false, 1400 },
			[]string{"internal: false in the cluster, true here", "icc: true in the cluster, false here", "mtu: 0 in the cluster, 1400 here"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			if got := base.Diff(o); !slices.Equal(got, tc.want) {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClusterKeys(t *testing.T) {
	k := ClusterKeys{Root: DefaultClusterRoot}
	a := netip.MustParseAddr("10.77.0.5")
	for got, want := range map[string]string{
		k.Network("app"):  "/mynet/v1/networks/app",
		k.VNI(4096):       "/mynet/v1/vnis/4096",
		k.Cursor("app"):   "/mynet/v1/cursors/app",
		k.Claim("app", a): "/mynet/v1/claims/app/10.77.0.5",
		k.Host("h1"):      "/mynet/v1/hosts/h1",
		k.Alive("h1"):     "/mynet/v1/alive/h1",
	} {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	if got, err := k.ClaimAddr("app", k.Claim("app", a)); err != nil || got != a {
		t.Errorf("ClaimAddr = %v, %v", got, err)
	}
	if _, err := k.ClaimAddr("app", k.Claim("app2", a)); err == nil {
		t.Error("a claim of app2 parsed as one of app")
	}
}
