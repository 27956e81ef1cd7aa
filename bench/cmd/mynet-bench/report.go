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

// targetList collects the targets in the order they are printed.
type targetList []target

// add records a target; a NaN value is one this run did not measure.
func (ts *targetList) add(phase, what string, v float64, measured string, ok bool) {
	t := target{Phase: phase, Target: what, Value: num(v), Measured: measured, Result: verdict(ok)}
	if math.IsNaN(v) {
		t.Result, t.Measured = "SKIP", "not measured"
	}
	*ts = append(*ts, t)
}

// ratio records a target on mynet's ratio to bridge: at most limit, or
// at least limit when !atMost.
func (ts *targetList) ratio(phase, what string, p *pairResult, limit float64, atMost bool) {
	v := math.NaN()
	if p != nil {
		v = float64(p.Ratio)
	}
	ok := v <= limit
	if !atMost {
		ok = v >= limit
	}
	ts.add(phase, what, v, fmt.Sprintf("%.3fx", v), ok)
}

func (b *bench) targets() []target {
	r := b.rep
	var ts targetList
	var p2, p3, p7a, p7b *pairResult
	if r.Parallel != nil {
		p2 = r.Parallel.Total
	}
	if r.NetCreate != nil {
		p3 = r.NetCreate.Total
	}
	if r.DataPlane != nil {
		p7a, p7b = r.DataPlane.Throughput, r.DataPlane.RRMean
	}
	ts.ratio("1", "container lifecycle <= 1.00x bridge", r.Lifecycle, 1.00, true)
	ts.ratio("2", fmt.Sprintf("%d parallel starts + removal <= 1.00x bridge", b.cfg.parallel), p2, 1.00, true)
	ts.ratio("3", "network create + rm <= 1.00x bridge", p3, 1.00, true)
	apiTarget(&ts, r.API)
	scalingTarget(&ts, r.Scaling)
	v6, m6 := ruleSpread(r.Rules, b.cfg.ports)
	ts.add("6", "iptables rules independent of endpoint count", v6, m6, v6 == 0)
	ts.ratio("7", "TCP throughput >= 0.97x bridge", p7a, 0.97, false)
	ts.ratio("7", "request/response latency (mean) <= 1.03x bridge", p7b, 1.03, true)
	memoryTarget(&ts, r.Memory)
	portsTargets(&ts, r.Ports)
	if b.cfg.phases["cluster"] {
		clusterTargets(&ts, r.Cluster)
	}
	return ts
}

func apiTarget(ts *targetList, api []apiResult) {
	v4 := math.NaN()
	var worst string
	for _, a := range api {
		if a.Concurrency == 64 {
			v4, worst = float64(a.WorstP99), a.WorstCall
		}
	}
	ts.add("4", "p99 per call < 2 ms at concurrency 64", v4, fmt.Sprintf("%.2f ms (%s)", v4, worst), v4 < 2)
}

func scalingTarget(ts *targetList, s *scalingResult) {
	v5 := math.NaN()
	m5 := ""
	firstN, lastN := 10, maxEndpoints
	if s != nil && len(s.Points) > 1 && s.LastN > 0 { // LastN: the phase finished
		v5 = float64(s.Ratio)
		firstN, lastN = s.FirstN, s.LastN
		m5 = fmt.Sprintf("%.3fx", v5)
	}
	ts.add("5", fmt.Sprintf("cycle of endpoint %d <= 1.2x endpoint %d", lastN, firstN), v5, m5, v5 <= 1.2)
}

// ruleSpread is phase 6's figure: for each published-port count, the
// rule count must not change with the endpoint count, so the figure is
// the largest spread, NaN without two counts.
func ruleSpread(rules []ruleCount, cfgPorts int) (float64, string) {
	if len(rules) <= 1 {
		return math.NaN(), ""
	}
	byPorts := map[int][]ruleCount{}
	for _, rc := range rules {
		byPorts[rc.Ports] = append(byPorts[rc.Ports], rc)
	}
	worstSpread := 0
	var parts []string
	for _, ports := range []int{0, cfgPorts} {
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
		if ports == cfgPorts && ports == 0 {
			break
		}
	}
	return float64(worstSpread), fmt.Sprintf("rules@endpoints %s", strings.Join(parts, "; "))
}

func memoryTarget(ts *targetList, mem *memoryResult) {
	v8 := math.NaN()
	m8 := ""
	eps := maxEndpoints
	if mem != nil && mem.EndpointsRSS > 0 {
		v8, eps = float64(mem.EndpointsRSS)/(1<<20), mem.Endpoints
		m8 = fmt.Sprintf("%.1f MiB", v8)
	}
	ts.add("8", fmt.Sprintf("RSS < 40 MiB at %d endpoints", eps), v8, m8, v8 < 40)
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func (b *bench) printTable(w io.Writer) {
	r := b.rep
	m := r.Machine
	fmt.Fprintf(w, "\nmynet-bench run %s: %d CPUs, kernel %s, docker %s (client %s), load at start %s\n",
		r.RunID, m.CPUs, m.Kernel, m.DockerServer, m.DockerClient, m.LoadAvg)
	fmt.Fprintf(w, "mynet %s; %.0f s (%.0f s of it waiting for the docker lock); figures from a shared or busy machine are indicative only\n\n", m.MynetCommit, r.Seconds, r.LockWait)
	printPairs(w, r)
	printAPI(w, r.API)
	printScaling(w, r.Scaling)
	printRules(w, r.Rules)
	printMemory(w, r.Memory)
	printPorts(w, r.Ports)
	printCluster(w, r.Cluster)
	printGoBench(w, r.GoBench)
	fmt.Fprintf(w, "\nTargets\n")
	tw := newTable(w)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Phase, t.Target, t.Measured, t.Result)
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", e)
	}
}

// pairTable is the table of the measures compared with bridge, and the
// lines on mynet's own share of them printed under it.
type pairTable struct {
	tw     *tabwriter.Writer
	shares []string
}

func (t *pairTable) pair(phase string, p *pairResult, format string) {
	if p == nil {
		return
	}
	fmt.Fprintf(t.tw, "%s\t%s (median of %d, %s)\t"+format+"\t"+format+"\t%.3fx\n", phase, p.Op, len(p.Mynet), p.Unit,
		float64(p.MynetMedian), float64(p.BridgeMedian), float64(p.Ratio))
}

func (t *pairTable) share(phase, unit string, p *pairResult, pt *pluginTime) {
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
	t.shares = append(t.shares, fmt.Sprintf("%s  mynet's own time per %s: %.1f ms (%s); median gap to bridge: %.1f ms",
		phase, unit, float64(pt.PerUnitMs), strings.Join(top, ", "), 1000*(float64(p.MynetMedian)-float64(p.BridgeMedian))))
}

// printPairs prints phases 1, 2, 3 and 7, mynet beside bridge.
func printPairs(w io.Writer, r *report) {
	if r.Lifecycle == nil && r.Parallel == nil && r.NetCreate == nil && r.DataPlane == nil {
		return
	}
	t := &pairTable{tw: newTable(w)}
	fmt.Fprintln(t.tw, "#\tmeasure\tmynet\tbridge\tratio")
	t.pair("1", r.Lifecycle, "%.3f")
	if r.Lifecycle != nil {
		t.share("1", "container", r.Lifecycle, r.Lifecycle.Plugin)
	}
	if r.Parallel != nil {
		t.pair("2", r.Parallel.First, "%.2f")
		t.pair("2", r.Parallel.Second, "%.2f")
		t.pair("2", r.Parallel.Total, "%.2f")
		if pt := r.Parallel.Total.Plugin; pt != nil && pt.Units > 0 {
			t.shares = append(t.shares, fmt.Sprintf("2  mynet's time per container: %.1f ms (server-side, including waits for mynet's lock under concurrency)", float64(pt.PerUnitMs)))
		}
	}
	if r.NetCreate != nil {
		t.pair("3", r.NetCreate.First, "%.3f")
		t.pair("3", r.NetCreate.Second, "%.3f")
		t.pair("3", r.NetCreate.Total, "%.3f")
		t.share("3", "network", r.NetCreate.Total, r.NetCreate.Total.Plugin)
	}
	if r.DataPlane != nil {
		t.pair("7", r.DataPlane.Throughput, "%.2f")
		t.pair("7", r.DataPlane.RRMean, "%.1f")
		t.pair("7", r.DataPlane.RRP99, "%.1f")
	}
	t.tw.Flush()
	for _, l := range t.shares {
		fmt.Fprintln(w, l)
	}
}

// callHeader writes a table's header: first, a column per plugin call,
// then last.
func callHeader(w io.Writer, first, last string) {
	fmt.Fprint(w, first)
	for _, c := range callNames {
		fmt.Fprintf(w, "\t%s", c)
	}
	fmt.Fprintln(w, last)
}

func printAPI(w io.Writer, api []apiResult) {
	if len(api) == 0 {
		return
	}
	fmt.Fprintf(w, "\n4  plugin API on the socket, ms per call (p50 / p99)\n")
	tw := newTable(w)
	callHeader(tw, "concurrency\tcycles/s", "\tcycle")
	for _, a := range api {
		fmt.Fprintf(tw, "%d\t%.1f", a.Concurrency, float64(a.CyclesPerSec))
		for _, c := range callNames {
			s := a.Calls[c]
			fmt.Fprintf(tw, "\t%.2f / %.2f", float64(s.P50), float64(s.P99))
		}
		fmt.Fprintf(tw, "\t%.2f / %.2f\n", float64(a.Cycle.P50), float64(a.Cycle.P99))
	}
	tw.Flush()
}

func printScaling(w io.Writer, s *scalingResult) {
	if s == nil || len(s.Points) == 0 {
		return
	}
	fmt.Fprintf(w, "\n5  endpoint scaling: median ms of the Nth endpoint's cycle (N-1 alive)\n")
	tw := newTable(w)
	callHeader(tw, "N\tcycle", "")
	for _, p := range s.Points {
		fmt.Fprintf(tw, "%d\t%.2f", p.N, float64(p.CycleMedian))
		for _, c := range callNames {
			fmt.Fprintf(tw, "\t%.2f", float64(p.Calls[c].P50))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, lp := range s.Probes {
		fmt.Fprintf(w, "   lock probe, %d endpoints: an endpoint call every 20 ms for %.0f s after a change: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
			lp.N, lp.Seconds, float64(lp.Call.P50), float64(lp.Call.P99), float64(lp.Call.Max))
	}
}

func printRules(w io.Writer, rules []ruleCount) {
	if len(rules) == 0 {
		return
	}
	fmt.Fprintf(w, "\n6  mynet's iptables rules in the scratch namespace\n")
	tw := newTable(w)
	fmt.Fprintln(tw, "endpoints\tpublished ports\tIPv4\tIPv6\ttotal\tnft bridge chains\tnft bridge rules")
	for _, rc := range rules {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\n", rc.Endpoints, rc.Ports, rc.IPv4, rc.IPv6, rc.Total, rc.NftChains, rc.NftRules)
	}
	tw.Flush()
}

func printMemory(w io.Writer, mem *memoryResult) {
	if mem == nil {
		return
	}
	mib := func(v int64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	}
	fmt.Fprintf(w, "\n8  mynet RSS: started %s, idle with a network %s, after phase 4 %s, %d endpoints %s (peak %s)\n",
		mib(mem.StartRSS), mib(mem.IdleRSS), mib(mem.AfterAPIRSS), mem.Endpoints, mib(mem.EndpointsRSS), mib(mem.PeakRSS))
}

func printGoBench(w io.Writer, gb []goBenchResult) {
	if len(gb) == 0 {
		return
	}
	fmt.Fprintf(w, "\nGo benchmarks\n")
	tw := newTable(w)
	for _, g := range gb {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d B/op\t%d allocs/op\n", strings.TrimPrefix(g.Package, "github.com/mynet/mynet/"), g.Name, fmtNs(g.NsPerOp), g.BytesPerOp, g.AllocsPerOp)
	}
	tw.Flush()
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
