package main

import (
	"math"
	"strings"
	"testing"
)

// TestClusterTargets: the cluster phase's targets are SKIP when it did not
// measure them (also a step it never reached), else PASS or MISS on each
// figure.
func TestClusterTargets(t *testing.T) {
	pair := func(a, b float64) *clusterPair {
		p := &clusterPair{A: []float64{a}, B: []float64{b}}
		p.finish()
		return p
	}
	nan := num(math.NaN())
	tests := []struct {
		name string
		res  *clusterResult
		want string // stream rr run start stop propagation resync rss
	}{
		{"not run", nil, "SKIP SKIP SKIP SKIP SKIP SKIP SKIP SKIP"},
		{"failed before the etcd steps", &clusterResult{Stream: pair(9, 10), RRMean: pair(14, 10), WritesStart: nan, WritesStop: nan, Resync: nan},
			"PASS MISS SKIP SKIP SKIP SKIP SKIP SKIP"},
		{"every step", &clusterResult{
			Stream: pair(8, 10), RRMean: pair(12, 10), Run: pair(115, 100),
			WritesStart: 1, WritesStop: 2,
			Propagation: &clusterDelay{P99Claim: 201},
			Resync:      999, RSS: 59 << 20,
		}, "MISS PASS PASS PASS MISS MISS PASS PASS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ts targetList
			clusterTargets(&ts, tt.res)
			var got []string
			for _, tg := range ts {
				got = append(got, tg.Result)
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("results %s, want %s", g, tt.want)
			}
		})
	}
}
