package driver

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
)

// newTestDriver returns a driver on a bbolt store in a temporary
// directory and a fake dataplane.
func newTestDriver(tb testing.TB, cfg Config) *Driver {
	st, err := state.Open(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	cfg.Store = st
	if cfg.Dataplane == nil {
		cfg.Dataplane = drivertest.New()
	}
	return New(cfg)
}

// testNetwork is the configuration of a network with one IPv4 subnet.
func testNetwork(id, pool, gateway string) NetworkConfig {
	return NetworkConfig{ID: id, BridgeName: "mn-" + id[:12], ICC: true, Masquerade: true, AntiSpoofing: true,
		IPv4: []SubnetConfig{{Pool: netip.MustParsePrefix(pool), Gateway: netip.MustParsePrefix(gateway)}}}
}

// BenchmarkDriverEndpointCycle is one container's calls (RequestAddress,
// CreateEndpoint, Join, DeleteEndpoint, ReleaseAddress) through the driver
// with the real bbolt store and the test's fake dataplane: the cost of
// everything but the kernel, the iptables binary and HTTP, with no other
// endpoint and with 999 others on the network.
func BenchmarkDriverEndpointCycle(b *testing.B) {
	for _, existing := range []int{0, 999} {
		b.Run(fmt.Sprintf("%d-others", existing), func(b *testing.B) {
			ctx := context.Background()
			d := newTestDriver(b, Config{DefaultPools: []ipam.PoolSpec{{Base: netip.MustParsePrefix("10.213.0.0/16"), Size: 24}}})
			nid := strings.Repeat("1", 64)
			pool, err := d.RequestPool(ctx, PoolRequest{Subnet: netip.MustParsePrefix("10.200.0.0/16")})
			if err != nil {
				b.Fatal(err)
			}
			gw, err := d.RequestAddress(ctx, AddressRequest{PoolID: pool, Gateway: true})
			if err != nil {
				b.Fatal(err)
			}
			if err := d.CreateNetwork(ctx, testNetwork(nid, pool, gw.String())); err != nil {
				b.Fatal(err)
			}
			up := func(eid string) (netip.Prefix, error) {
				a, err := d.RequestAddress(ctx, AddressRequest{PoolID: pool})
				if err != nil {
					return a, err
				}
				if _, err := d.CreateEndpoint(ctx, nid, eid, Interface{Address: a.String()}); err != nil {
					return a, err
				}
				_, err = d.Join(nid, eid)
				return a, err
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
				if err := d.DeleteEndpoint(ctx, nid, eid); err != nil {
					b.Fatal(err)
				}
				if err := d.ReleaseAddress(context.Background(), pool, addr.Addr()); err != nil {
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
			d := newTestDriver(b, Config{})
			nid, other := strings.Repeat("1", 64), strings.Repeat("2", 64)
			for i, n := range []string{nid, other} {
				if err := d.CreateNetwork(ctx, testNetwork(n, fmt.Sprintf("10.%d.0.0/16", 200+i), fmt.Sprintf("10.%d.0.1/16", 200+i))); err != nil {
					b.Fatal(err)
				}
			}
			for i := range existing {
				for j, n := range []string{nid, other} {
					addr := fmt.Sprintf("10.%d.%d.%d/16", 200+j, (i+2)/256, (i+2)%256)
					if _, err := d.CreateEndpoint(ctx, n, fmt.Sprintf("%063x%d", i+1, j), Interface{Address: addr}); err != nil {
						b.Fatal(err)
					}
				}
			}
			n := d.networks[nid]
			iface := Interface{Address: "10.200.100.1/16", MacAddress: "02:42:0a:c8:64:01"}
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
