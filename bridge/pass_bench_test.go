package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// passScale builds the state of issue 13's periodic-pass target in d's
// namespace: 100 networks, 1,000 endpoints under anti-spoofing (10 per
// network) and one published port each, the rules in one ensureAll.
func passScale(tb testing.TB, d *Dataplane) {
	tb.Helper()
	ctx := context.Background()
	var networks []model.Network
	var endpoints []model.Endpoint
	for i := range 100 {
		n := testNetwork(fmt.Sprintf("%012x%052d", 0xa00000+i, 0), fmt.Sprintf("10.%d.%d.0/24", 40+i/200, i%200), fmt.Sprintf("10.%d.%d.1/24", 40+i/200, i%200))
		if err := d.EnsureNetwork(ctx, n); err != nil {
			tb.Fatal(err)
		}
		networks = append(networks, n)
		for j := range 10 {
			k := i*10 + j
			ep := testEndpoint(n, fmt.Sprintf("%012x%052d", 0xe00000+k, 0))
			ep.MAC = net.HardwareAddr{0x02, 0, 0, 0, byte(k >> 8), byte(k)}
			ctr := n.IPv4[0].Pool.Addr().As4()
			ctr[3] = byte(2 + j)
			ep.Addresses = []netip.Addr{netip.AddrFrom4(ctr)}
			ep.AntiSpoofing = true
			if err := d.EnsureEndpoint(ctx, ep); err != nil {
				tb.Fatal(err)
			}
			hp := uint16(20000 + k)
			ep.Ports = []model.PortMapping{{Proto: "tcp", HostPort: hp, HostPortEnd: hp, ContainerIP: ep.Addresses[0], Port: 80}}
			endpoints = append(endpoints, ep)
		}
	}
	if _, err := d.EnsureRules(ctx, networks, endpoints); err != nil {
		tb.Fatal(err)
	}
	d.Sync()
}

// BenchmarkQuietPass is the dataplane's part of the periodic reconcile
// pass with nothing changed (driver.fingerprints: Sync, Fingerprint,
// SpoofFingerprint) at issue 13's size, in a scratch namespace, for each
// firewall backend. Issue 13's target: 10 ms.
func BenchmarkQuietPass(b *testing.B) {
	for _, fw := range []string{model.FirewallIPTables, model.FirewallNFTables} {
		b.Run(fw, func(b *testing.B) {
			withBackend(b, fw, func(d *Dataplane) {
				passScale(b, d)
				var first model.Digests
				reads0, cpu0 := d.reads(), cpuTime(b)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					d.Sync()
					fp, err := d.Fingerprint()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := d.SpoofFingerprint(); err != nil {
						b.Fatal(err)
					}
					if first == nil {
						first = fp
					} else if ch := first.Changed(fp); len(ch) > 0 {
						b.Fatalf("fingerprint changed with nothing changing: %v", ch)
					}
				}
				b.StopTimer()
				// The first pass reads what the setup changed.
				b.ReportMetric(float64(d.reads()-reads0)/float64(b.N), "reads/op")
				b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			})
		})
	}
}

// cpuTime is the process's CPU time so far, user and system: the pass's
// own cost on a machine that other work slows down.
func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// withBackend is withDataplane (iptables, primed tables) or
// withNFTDataplane by backend.
func withBackend(tb testing.TB, fw string, fn func(d *Dataplane)) {
	if fw == model.FirewallNFTables {
		withNFTDataplane(tb, fn)
		return
	}
	withDataplane(tb, "", fn)
}
