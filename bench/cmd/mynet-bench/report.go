package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// target is one of issue 6's targets and whether this run met it.
type target struct {
	Phase    string `json:"phase"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Value    num    `json:"value"`
	Result   string `json:"result"` // PASS, MISS or SKIP (not measured)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func (b *bench) targets() []target {
	r := b.rep
	var ts []target
	add := func(phase, what string, v float64, measured string, ok bool) {
		t := target{Phase: phase, Target: what, Value: num(v), Measured: measured, Result: verdict(ok)}
		if math.IsNaN(v) {
			t.Result, t.Measured = "SKIP", "not measured"
		}
		ts = append(ts, t)
	}
	nan := math.NaN()
	ratioTarget := func(phase, what string, p *pairResult, limit float64, atMost bool) {
		v := nan
		if p != nil {
			v = float64(p.Ratio)
		}
		ok := v <= limit
		if !atMost {
			ok = v >= limit
		}
		add(phase, what, v, fmt.Sprintf("%.3fx", v), ok)
	}
	var p1, p2, p3, p7a, p7b *pairResult
	if r.Lifecycle != nil {
		p1 = r.Lifecycle
	}
	if r.Parallel != nil {
		p2 = r.Parallel.Total
	}
	if r.NetCreate != nil {
		p3 = r.NetCreate.Total
	}
	if r.DataPlane != nil {
		p7a, p7b = r.DataPlane.Throughput, r.DataPlane.RRMean
	}
	ratioTarget("1", "container lifecycle <= 1.00x bridge", p1, 1.00, true)
	ratioTarget("2", fmt.Sprintf("%d parallel starts + removal <= 1.00x bridge", b.cfg.parallel), p2, 1.00, true)
	ratioTarget("3", "network create + rm <= 1.00x bridge", p3, 1.00, true)

	v4 := nan
	var worst string
	for _, a := range r.API {
		if a.Concurrency == 64 {
			v4, worst = float64(a.WorstP99), a.WorstCall
		}
	}
	add("4", "p99 per call < 2 ms at concurrency 64", v4, fmt.Sprintf("%.2f ms (%s)", v4, worst), v4 < 2)

	v5 := nan
	m5 := ""
	firstN, lastN := 10, maxEndpoints
	if r.Scaling != nil && len(r.Scaling.Points) > 1 && r.Scaling.LastN > 0 { // LastN: the phase finished
		v5 = float64(r.Scaling.Ratio)
		firstN, lastN = r.Scaling.FirstN, r.Scaling.LastN
		m5 = fmt.Sprintf("%.3fx", v5)
	}
	add("5", fmt.Sprintf("cycle of endpoint %d <= 1.2x endpoint %d", lastN, firstN), v5, m5, v5 <= 1.2)

	// Phase 6: for each published-port count, the rule count must not
	// change with the endpoint count.
	v6, m6 := nan, ""
	if len(r.Rules) > 1 {
		byPorts := map[int][]ruleCount{}
		for _, rc := range r.Rules {
			byPorts[rc.Ports] = append(byPorts[rc.Ports], rc)
		}
		worstSpread := 0
		var parts []string
		for _, ports := range []int{0, b.cfg.ports} {
			rcs := byPorts[ports]
			if len(rcs) == 0 {
				continue
			}
			lo, hi := rcs[0].Total, rcs[0].Total
			var s []string
			for _, rc := range rcs {
				lo, hi = min(lo, rc.Total), max(hi, rc.Total)
				s = append(s, fmt.Sprintf("%d@%d", rc.Total, rc.Endpoints))
			}
			worstSpread = max(worstSpread, hi-lo)
			parts = append(parts, fmt.Sprintf("%d ports: %s", ports, strings.Join(s, " ")))
			if ports == b.cfg.ports && ports == 0 {
				break
			}
		}
		v6 = float64(worstSpread)
		m6 = fmt.Sprintf("rules@endpoints %s", strings.Join(parts, "; "))
	}
	add("6", "iptables rules independent of endpoint count", v6, m6, v6 == 0)

	ratioTarget("7", "TCP throughput >= 0.97x bridge", p7a, 0.97, false)
	ratioTarget("7", "request/response latency (mean) <= 1.03x bridge", p7b, 1.03, true)

	v8 := nan
	m8 := ""
	eps := maxEndpoints
	if r.Memory != nil && r.Memory.EndpointsRSS > 0 {
		v8, eps = float64(r.Memory.EndpointsRSS)/(1<<20), r.Memory.Endpoints
		m8 = fmt.Sprintf("%.1f MiB", v8)
	}
	add("8", fmt.Sprintf("RSS < 40 MiB at %d endpoints", eps), v8, m8, v8 < 40)
	return ts
}

func (b *bench) printTable(w io.Writer) {
	r := b.rep
	m := r.Machine
	fmt.Fprintf(w, "\nmynet-bench run %s: %d CPUs, kernel %s, docker %s (client %s), load at start %s\n",
		r.RunID, m.CPUs, m.Kernel, m.DockerServer, m.DockerClient, m.LoadAvg)
	fmt.Fprintf(w, "mynet %s; %.0f s (%.0f s of it waiting for the docker lock); figures from a shared or busy machine are indicative only\n\n", m.MynetCommit, r.Seconds, r.LockWait)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tmeasure\tmynet\tbridge\tratio")
	pair := func(phase string, p *pairResult, format string) {
		if p == nil {
			return
		}
		fmt.Fprintf(tw, "%s\t%s (median of %d, %s)\t"+format+"\t"+format+"\t%.3fx\n", phase, p.Op, len(p.Mynet), p.Unit,
			float64(p.MynetMedian), float64(p.BridgeMedian), float64(p.Ratio))
	}
	var shares []string
	share := func(phase, unit string, p *pairResult, pt *pluginTime) {
		if p == nil || pt == nil || pt.Units == 0 {
			return
		}
		var top []string
		for i, op := range pt.topOps() {
			if i == 3 {
				break
			}
			top = append(top, fmt.Sprintf("%s %.1f", strings.TrimPrefix(strings.TrimPrefix(op, "NetworkDriver."), "IpamDriver."), float64(pt.Ops[op].TotalMs)/float64(pt.Units)))
		}
		shares = append(shares, fmt.Sprintf("%s  mynet's own time per %s: %.1f ms (%s); median gap to bridge: %.1f ms",
			phase, unit, float64(pt.PerUnitMs), strings.Join(top, ", "), 1000*(float64(p.MynetMedian)-float64(p.BridgeMedian))))
	}
	pair("1", r.Lifecycle, "%.3f")
	if r.Lifecycle != nil {
		share("1", "container", r.Lifecycle, r.Lifecycle.Plugin)
	}
	if r.Parallel != nil {
		pair("2", r.Parallel.First, "%.2f")
		pair("2", r.Parallel.Second, "%.2f")
		pair("2", r.Parallel.Total, "%.2f")
		if pt := r.Parallel.Total.Plugin; pt != nil && pt.Units > 0 {
			shares = append(shares, fmt.Sprintf("2  mynet's time per container: %.1f ms (server-side, including waits for mynet's lock under concurrency)", float64(pt.PerUnitMs)))
		}
	}
	if r.NetCreate != nil {
		pair("3", r.NetCreate.First, "%.3f")
		pair("3", r.NetCreate.Second, "%.3f")
		pair("3", r.NetCreate.Total, "%.3f")
		share("3", "network", r.NetCreate.Total, r.NetCreate.Total.Plugin)
	}
	if r.DataPlane != nil {
		pair("7", r.DataPlane.Throughput, "%.2f")
		pair("7", r.DataPlane.RRMean, "%.1f")
		pair("7", r.DataPlane.RRP99, "%.1f")
	}
	tw.Flush()
	for _, l := range shares {
		fmt.Fprintln(w, l)
	}

	if len(r.API) > 0 {
		fmt.Fprintf(w, "\n4  plugin API on the socket, ms per call (p50 / p99)\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprint(tw, "concurrency\tcycles/s")
		for _, c := range callNames {
			fmt.Fprintf(tw, "\t%s", c)
		}
		fmt.Fprintln(tw, "\tcycle")
		for _, a := range r.API {
			fmt.Fprintf(tw, "%d\t%.1f", a.Concurrency, float64(a.CyclesPerSec))
			for _, c := range callNames {
				s := a.Calls[c]
				fmt.Fprintf(tw, "\t%.2f / %.2f", float64(s.P50), float64(s.P99))
			}
			fmt.Fprintf(tw, "\t%.2f / %.2f\n", float64(a.Cycle.P50), float64(a.Cycle.P99))
		}
		tw.Flush()
	}
	if r.Scaling != nil && len(r.Scaling.Points) > 0 {
		fmt.Fprintf(w, "\n5  endpoint scaling: median ms of the Nth endpoint's cycle (N-1 alive)\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprint(tw, "N\tcycle")
		for _, c := range callNames {
			fmt.Fprintf(tw, "\t%s", c)
		}
		fmt.Fprintln(tw)
		for _, p := range r.Scaling.Points {
			fmt.Fprintf(tw, "%d\t%.2f", p.N, float64(p.CycleMedian))
			for _, c := range callNames {
				fmt.Fprintf(tw, "\t%.2f", float64(p.Calls[c].P50))
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		for _, lp := range r.Scaling.Probes {
			fmt.Fprintf(w, "   lock probe, %d endpoints: an endpoint call every 20 ms for %.0f s after a change: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
				lp.N, lp.Seconds, float64(lp.Call.P50), float64(lp.Call.P99), float64(lp.Call.Max))
		}
	}
	if len(r.Rules) > 0 {
		fmt.Fprintf(w, "\n6  mynet's iptables rules in the scratch namespace\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "endpoints\tpublished ports\tIPv4\tIPv6\ttotal\tnft bridge chains\tnft bridge rules")
		for _, rc := range r.Rules {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\n", rc.Endpoints, rc.Ports, rc.IPv4, rc.IPv6, rc.Total, rc.NftChains, rc.NftRules)
		}
		tw.Flush()
	}
	if mem := r.Memory; mem != nil {
		mib := func(v int64) string {
			if v == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
		}
		fmt.Fprintf(w, "\n8  mynet RSS: started %s, idle with a network %s, after phase 4 %s, %d endpoints %s (peak %s)\n",
			mib(mem.StartRSS), mib(mem.IdleRSS), mib(mem.AfterAPIRSS), mem.Endpoints, mib(mem.EndpointsRSS), mib(mem.PeakRSS))
	}
	if len(r.GoBench) > 0 {
		fmt.Fprintf(w, "\nGo benchmarks\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, g := range r.GoBench {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d B/op\t%d allocs/op\n", strings.TrimPrefix(g.Package, "github.com/mynet/mynet/"), g.Name, fmtNs(g.NsPerOp), g.BytesPerOp, g.AllocsPerOp)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nTargets\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Phase, t.Target, t.Measured, t.Result)
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", e)
	}
}

func fmtNs(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms/op", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.2f us/op", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns/op", ns)
}
