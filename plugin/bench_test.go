package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
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

// BenchmarkDriverEndpointCycle is one container's calls (RequestAddress,
// CreateEndpoint, Join, Leave, DeleteEndpoint, ReleaseAddress) through the
// driver with the real bbolt store and the test's fake dataplane: the cost
// of everything but the kernel, the iptables binary and HTTP, with no other
// endpoint and with 999 others on the network.
func BenchmarkDriverEndpointCycle(b *testing.B) {
	for _, existing := range []int{0, 999} {
		b.Run(fmt.Sprintf("%d-others", existing), func(b *testing.B) {
			ctx := context.Background()
			st, err := state.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			d := NewDriver(Config{Store: st, Dataplane: newFake(), DefaultPools: []ipam.PoolSpec{{Base: netip.MustParsePrefix("10.213.0.0/16"), Size: 24}}})
			nid := strings.Repeat("1", 64)
			pool, err := d.RequestPool(ctx, &ipamapi.RequestPoolRequest{AddressSpace: "local", Pool: "10.200.0.0/16"})
			if err != nil {
				b.Fatal(err)
			}
			gw, err := d.RequestAddress(ctx, &ipamapi.RequestAddressRequest{PoolID: pool.PoolID, Options: map[string]string{gatewayRequestKey: gatewayRequestType}})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := d.CreateNetwork(ctx, &network.CreateNetworkRequest{
				NetworkID: nid, Options: map[string]any{optGeneric: map[string]any{}},
				IPv4Data: []*network.IPAMData{{AddressSpace: "local", Pool: pool.Pool, Gateway: gw.Address}},
			}); err != nil {
				b.Fatal(err)
			}
			up := func(eid string) (string, error) {
				a, err := d.RequestAddress(ctx, &ipamapi.RequestAddressRequest{PoolID: pool.PoolID})
				if err != nil {
					return "", err
				}
				if _, err := d.CreateEndpoint(ctx, &network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, Interface: &network.EndpointInterface{Address: a.Address}}); err != nil {
					return "", err
				}
				_, err = d.Join(ctx, &network.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/x"})
				return a.Address, err
			}
			for i := range existing {
				if _, err := up(fmt.Sprintf("%064x", i+1)); err != nil {
					b.Fatal(err)
				}
			}
			eid := strings.Repeat("e", 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				addr, err := up(eid)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := d.Leave(ctx, &network.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
					b.Fatal(err)
				}
				if _, err := d.DeleteEndpoint(ctx, &network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
					b.Fatal(err)
				}
				bare, _, _ := strings.Cut(addr, "/")
				if _, err := d.ReleaseAddress(ctx, &ipamapi.ReleaseAddressRequest{PoolID: pool.PoolID, Address: bare}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewEndpoint is CreateEndpoint's checks under mapMu (capacity,
// addresses, uniqueness of address and MAC), with no other endpoint and
// with 999 others on the network and 1000 on another: the part of an
// endpoint call that holds up every other.
func BenchmarkNewEndpoint(b *testing.B) {
	for _, existing := range []int{0, 999} {
		b.Run(fmt.Sprintf("%d-others", existing), func(b *testing.B) {
			ctx := context.Background()
			st, err := state.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			d := NewDriver(Config{Store: st, Dataplane: newFake()})
			nid, other := strings.Repeat("1", 64), strings.Repeat("2", 64)
			for i, n := range []string{nid, other} {
				if _, err := d.CreateNetwork(ctx, &network.CreateNetworkRequest{
					NetworkID: n, Options: map[string]any{optGeneric: map[string]any{}},
					IPv4Data: []*network.IPAMData{{Pool: fmt.Sprintf("10.%d.0.0/16", 200+i), Gateway: fmt.Sprintf("10.%d.0.1/16", 200+i)}},
				}); err != nil {
					b.Fatal(err)
				}
			}
			for i := range existing {
				for j, n := range []string{nid, other} {
					addr := fmt.Sprintf("10.%d.%d.%d/16", 200+j, (i+2)/256, (i+2)%256)
					if _, err := d.CreateEndpoint(ctx, &network.CreateEndpointRequest{NetworkID: n, EndpointID: fmt.Sprintf("%063x%d", i+1, j), Interface: &network.EndpointInterface{Address: addr}}); err != nil {
						b.Fatal(err)
					}
				}
			}
			n := d.networks[nid]
			iface := &network.EndpointInterface{Address: "10.200.100.1/16", MacAddress: "02:42:0a:c8:64:01"}
			eid := strings.Repeat("e", 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				d.mapMu.Lock()
				_, err := d.newEndpoint(n, eid, iface)
				d.mapMu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
