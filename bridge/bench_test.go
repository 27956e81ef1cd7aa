package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// BenchmarkEndpointCycle is the dataplane's part of a container start and
// stop, in a scratch namespace, with the time of each step reported apart
// so a regression points at its step. "others" endpoints stay alive on the
// bridge, since the anti-spoofing table grows with them.
func BenchmarkEndpointCycle(b *testing.B) {
	for _, tc := range []struct {
		others int
		spoof  bool
	}{{0, true}, {999, true}, {0, false}, {999, false}} {
		others := tc.others
		b.Run(fmt.Sprintf("%d-others/anti-spoofing=%v", others, tc.spoof), func(b *testing.B) {
			withDataplane(b, "", func(d *Dataplane) {
				ctx := context.Background()
				n := testNetwork(nid1, "10.20.0.0/16", "10.20.0.1/16")
				if err := d.EnsureNetwork(ctx, n); err != nil {
					b.Fatal(err)
				}
				endpoint := func(i int) model.Endpoint {
					ep := testEndpoint(n, fmt.Sprintf("%012x%052d", i, 0))
					ep.MAC = net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)}
					ep.Addresses = append(ep.Addresses, n.IPv4[0].Pool.Addr().Next().Next())
					ep.AntiSpoofing = tc.spoof
					return ep
				}
				for i := 1; i <= others; i++ {
					if err := d.EnsureEndpoint(ctx, endpoint(i)); err != nil {
						b.Fatal(err)
					}
				}
				var ensure, del time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					ep := endpoint(others + 1 + i%1000)
					t0 := time.Now()
					if err := d.EnsureEndpoint(ctx, ep); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if err := d.DeleteEndpoint(ctx, ep); err != nil {
						b.Fatal(err)
					}
					ensure, del = ensure+t1.Sub(t0), del+time.Since(t1)
					d.Sync() // the deferred veth deletion, outside the timed calls
				}
				b.StopTimer()
				b.ReportMetric(float64(ensure.Microseconds())/float64(b.N), "ensure-µs/op")
				b.ReportMetric(float64(del.Microseconds())/float64(b.N), "delete-µs/op")
				if err := d.DeleteNetwork(ctx, n); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkPorts publishes and unpublishes many mappings on one endpoint,
// each a separate rule pair (host ports not consecutive, so none merge),
// in a scratch namespace: the firewall's cost at the scale users publish.
func BenchmarkPorts(b *testing.B) {
	for _, count := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("%d-mappings", count), func(b *testing.B) {
			withDataplane(b, "", func(d *Dataplane) {
				ctx := context.Background()
				n := testNetwork(nid1, "10.20.0.0/16", "10.20.0.1/16")
				if err := d.EnsureNetwork(ctx, n); err != nil {
					b.Fatal(err)
				}
				ep := testEndpoint(n, eid1)
				ctr := netip.MustParseAddr("10.20.0.2")
				var ports []model.PortMapping
				for i := range count {
					hp := uint16(20000 + 2*(i%20000))
					proto := "tcp"
					if i >= 20000 {
						proto = "udp"
					}
					ports = append(ports, model.PortMapping{Proto: proto, HostPort: hp, HostPortEnd: hp, ContainerIP: ctr, Port: uint16(1000 + i%60000)})
				}
				var publish, unpublish time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if err := d.RemovePorts(ctx, ep, ports); err != nil {
						b.Fatal(err)
					}
					publish, unpublish = publish+t1.Sub(t0), unpublish+time.Since(t1)
				}
				b.StopTimer()
				b.ReportMetric(float64(publish.Milliseconds())/float64(b.N), "publish-ms/op")
				b.ReportMetric(float64(unpublish.Milliseconds())/float64(b.N), "unpublish-ms/op")
				if err := d.DeleteNetwork(ctx, n); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
