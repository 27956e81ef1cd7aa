package plugin

import (
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

// BenchmarkParseCreateNetwork parses the CreateNetwork request of a
// network with every -o option mynet supports and an IPv6 subnet, and of
// one created without options.
func BenchmarkParseCreateNetwork(b *testing.B) {
	full := &network.CreateNetworkRequest{
		NetworkID: strings.Repeat("ab", 32),
		Options: map[string]any{
			optEnableIPv6: true,
			optInternal:   false,
			optGeneric: map[string]any{
				OptBridgeName: "br-apps", OptMTU: "1400", OptICC: "true", OptMasquerade: "true", OptHostBinding: "127.0.0.1",
			},
		},
		IPv4Data: []*network.IPAMData{{AddressSpace: "local", Pool: "10.125.0.0/24", Gateway: "10.125.0.254/24"}},
		IPv6Data: []*network.IPAMData{{AddressSpace: "local", Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}},
	}
	plain := &network.CreateNetworkRequest{
		NetworkID: strings.Repeat("cd", 32),
		Options:   map[string]any{optEnableIPv6: false, optGeneric: map[string]any{}},
		IPv4Data:  []*network.IPAMData{{AddressSpace: "local", Pool: "10.213.0.0/24", Gateway: "10.213.0.1/24"}},
	}
	for name, req := range map[string]*network.CreateNetworkRequest{"all-options": full, "defaults": plain} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := ParseCreateNetwork(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
