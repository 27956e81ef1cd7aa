package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestTargets checks each target's verdict: SKIP when the phase did not
// run, PASS or MISS on its figure.
func TestTargets(t *testing.T) {
	pair := func(m, b float64) *pairResult {
		return (&pairResult{Mynet: []float64{m}, Bridge: []float64{b}}).finish()
	}
	full := &report{
		Lifecycle: pair(1, 1),
		Parallel:  &splitResult{Total: pair(2, 1)},
		NetCreate: &splitResult{Total: pair(1, 2)},
		API:       []apiResult{{Concurrency: 1, WorstP99: 5}, {Concurrency: 64, WorstP99: 1.5, WorstCall: "Join"}},
		Scaling:   &scalingResult{Points: []scalePoint{{N: 10}, {N: 100}}, Ratio: 1.3, FirstN: 10, LastN: 100},
		Rules: []ruleCount{
			{Endpoints: 0, Total: 10}, {Endpoints: 100, Total: 10},
			{Endpoints: 100, Ports: 20, Total: 50}, {Endpoints: 1000, Ports: 20, Total: 50},
		},
		DataPlane: &dataPlaneResult{Throughput: pair(0.96, 1), RRMean: pair(1.02, 1)},
		Memory:    &memoryResult{EndpointsRSS: 30 << 20, Endpoints: 1000},
	}
	tests := []struct {
		name string
		rep  *report
		want string // the results in order
	}{
		{"nothing ran", &report{}, "SKIP SKIP SKIP SKIP SKIP SKIP SKIP SKIP SKIP"},
		{"every phase", full, "PASS MISS PASS PASS MISS PASS MISS PASS PASS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &bench{cfg: config{ports: 20, parallel: 50}, rep: tt.rep}
			var got []string
			for _, tg := range b.targets() {
				got = append(got, tg.Result)
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("results %v, want %s", got, tt.want)
			}
		})
	}
}

// TestPrintTableSections checks that each measured phase gets its
// section, and a phase that did not run none.
func TestPrintTableSections(t *testing.T) {
	b := &bench{rep: &report{
		API:     []apiResult{{Concurrency: 64}},
		Rules:   []ruleCount{{Endpoints: 1}},
		Targets: []target{{Phase: "4", Target: "p99", Measured: "1 ms", Result: "PASS"}},
		Errors:  []string{"phase 7: boom"},
	}}
	var buf bytes.Buffer
	b.printTable(&buf)
	out := buf.String()
	for _, want := range []string{"4  plugin API on the socket", "6  mynet's iptables rules", "Targets", "ERROR: phase 7: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"5  endpoint scaling", "8  mynet RSS", "Go benchmarks"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("output has %q for a phase that did not run:\n%s", unwanted, out)
		}
	}
}
