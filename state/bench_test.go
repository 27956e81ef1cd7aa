package state

import (
	"fmt"
	"testing"
	"time"
)

// benchEndpoint is a record of the size the driver writes for a container.
func benchEndpoint(i int) Endpoint {
	nid := fmt.Sprintf("%064x", 1)
	id := fmt.Sprintf("%064x", i+2)
	return Endpoint{
		NetworkID: nid, ID: id, HostVeth: "mnv" + id[:12], ContainerVeth: "mnc" + id[:12],
		MAC: "02:42:0a:c8:00:05", IPv4: "10.200.0.5/16", MACGenerated: true, Created: time.Now().UTC(),
	}
}

// openBench opens a store in a temporary directory (on the disk that holds
// os.TempDir; a tmpfs there would hide the fsync cost) with existing
// endpoints already committed.
func openBench(b *testing.B, existing int, noSync bool) *Store {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	s.db.NoSync = true // filling is not what is measured
	if err := s.PutPool(Pool{ID: "10.200.0.0/16", Pool: "10.200.0.0/16"}); err != nil {
		b.Fatal(err)
	}
	for i := range existing {
		if err := s.PutEndpoint(benchEndpoint(i + 1)); err != nil {
			b.Fatal(err)
		}
	}
	s.db.NoSync = noSync
	return s
}

// benchCases: an empty store, one holding 1000 endpoints, and the empty
// store without fsync for comparison.
var benchCases = []struct {
	name     string
	existing int
	noSync   bool
}{{"empty", 0, false}, {"1000-endpoints", 1000, false}, {"empty-nosync", 0, true}}

// BenchmarkEndpointCommit is the state commit of an endpoint: PutEndpoint
// then DeleteEndpoint, two bbolt transactions, each one an fsync. The nosync
// variant is a comparison only, to show what the fsyncs cost; mynet never
// runs without them.
func BenchmarkEndpointCommit(b *testing.B) {
	for _, c := range benchCases {
		b.Run(c.name, func(b *testing.B) {
			s := openBench(b, c.existing, c.noSync)
			ep := benchEndpoint(0)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.PutEndpoint(ep); err != nil {
					b.Fatal(err)
				}
				if err := s.DeleteEndpoint(ep.NetworkID, ep.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEndpointCycleTransactions is every transaction the driver commits
// for one container start and stop: the address, the pending endpoint
// record, the committed one, its deletion, the address's release.
func BenchmarkEndpointCycleTransactions(b *testing.B) {
	for _, c := range benchCases {
		b.Run(c.name, func(b *testing.B) {
			s := openBench(b, c.existing, c.noSync)
			ep := benchEndpoint(0)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.AddAddress("10.200.0.0/16", "10.200.0.5", ep.MAC, "10.200.0.5"); err != nil {
					b.Fatal(err)
				}
				ep.Pending = true
				if err := s.PutEndpoint(ep); err != nil {
					b.Fatal(err)
				}
				ep.Pending = false
				if err := s.PutEndpoint(ep); err != nil {
					b.Fatal(err)
				}
				if err := s.DeleteEndpoint(ep.NetworkID, ep.ID); err != nil {
					b.Fatal(err)
				}
				if err := s.RemoveAddress("10.200.0.0/16", "10.200.0.5"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
