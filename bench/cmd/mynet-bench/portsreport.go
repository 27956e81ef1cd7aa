package main

import (
	"fmt"
	"io"
	"math"
)

// portsTargets adds issue 13's targets, measured by phase 9.
func portsTargets(ts *targetList, p *portsResult) {
	if p == nil {
		return
	}
	if p.Publish != nil {
		dockerTargets(ts, p)
	}
	for _, b := range p.Backends {
		backendTargets(ts, b)
	}
}

// dockerTargets are phase 9's targets through dockerd.
func dockerTargets(ts *targetList, p *portsResult) {
	run, rm := math.NaN(), math.NaN()
	if p.RunOwn != nil && p.RunOwn.Units > 0 {
		run = float64(p.RunOwn.PerUnitMs) / 1000
	}
	if p.RmOwn != nil && p.RmOwn.Units > 0 {
		rm = float64(p.RmOwn.PerUnitMs) / 1000
	}
	ratio9 := float64(p.Publish.First.Ratio)
	ts.add("9", fmt.Sprintf("docker run -p with %d ports: mynet's own time <= 0.5 s", p.Ports), run, fmt.Sprintf("%.3f s", run), run <= 0.5)
	ts.add("9", "docker rm -f of it: mynet's own time <= 0.5 s", rm, fmt.Sprintf("%.3f s", rm), rm <= 0.5)
	ts.add("9", fmt.Sprintf("docker run -p with %d ports >= 10x faster than bridge", p.Ports), ratio9, fmt.Sprintf("%.3fx bridge's time", ratio9), ratio9 <= 0.1)
	conc, busy, mc := math.NaN(), math.NaN(), ""
	if c := p.Concurrent; c != nil {
		conc, busy = float64(c.WorstRatio), float64(c.Busy)
		mc = fmt.Sprintf("slowest %.2fx (%.2f s), median %.2fx", conc, percentile(c.During, 100), float64(c.Ratio))
	}
	ts.add("9", "no 503 answer to docker run -p / rm -f", float64(p.Busy), fmt.Sprintf("%d answers 503", p.Busy), p.Busy == 0)
	ts.add("9", "every docker run --rm during port work <= 1.10x alone", conc, mc, conc <= 1.1)
	ts.add("9", "no 503 answer during port work", busy, fmt.Sprintf("%.0f answers 503", busy), busy == 0)
}

func backendTargets(ts *targetList, b portsBackend) {
	if len(b.Mappings) > 0 {
		top := b.Mappings[len(b.Mappings)-1]
		pub, unpub := float64(top.PublishS), float64(top.UnpublishS)
		what := fmt.Sprintf("%s: %d mappings on one endpoint", b.Firewall, top.N)
		switch {
		case top.Skipped != "" || top.Err != "":
			why := "not run: " + top.Skipped
			if top.Err != "" {
				why = "failed after " + fmt.Sprintf("%.1f s + %.1f s: %s", pub, unpub, top.Err)
			}
			*ts = append(*ts, target{Phase: "9", Target: what + ": publish and unpublish <= 2 s each", Measured: why, Value: num(nan()), Result: "MISS"})
		default:
			ts.add("9", what+": publish <= 2 s", pub, fmt.Sprintf("%.2f s", pub), pub <= 2)
			ts.add("9", what+": unpublish <= 2 s", unpub, fmt.Sprintf("%.2f s", unpub), unpub <= 2)
		}
		v, m := linearity(b.Mappings)
		ts.add("9", b.Firewall+": cost per mapping at the largest count <= 1.5x at the smallest", v, m, v <= 1.5)
	}
	answer, flush := nan(), nan()
	if s := b.Startup; s != nil {
		answer, flush = startSeconds(s.Restart), startSeconds(s.AfterFlush)
	}
	ts.add("9", b.Firewall+": startup, socket answers with rules in place <= 1 s", answer, fmtStart(answer), answer <= 1)
	ts.add("9", b.Firewall+": startup after a flush of mynet's rules <= 2 s", flush, fmtStart(flush), flush <= 2)
	pass, probe, m := nan(), nan(), ""
	if pr := b.Pass; pr != nil {
		// The largest of the kinds seen (a recheck still running at the
		// window's end is not in the histogram; the probe shows it).
		for _, k := range []passStats{pr.Periodic, pr.Recheck} {
			if k.Count > 0 && (math.IsNaN(pass) || float64(k.MaxBoundMs) > pass) {
				pass = float64(k.MaxBoundMs)
			}
		}
		probe = float64(pr.Probe.Max)
		m = fmt.Sprintf("mean %.1f ms, recheck %.1f ms (all <= %.0f ms)", float64(pr.Periodic.MeanMs), float64(pr.Recheck.MeanMs), pass)
	}
	ts.add("9", b.Firewall+": periodic pass with nothing to repair <= 10 ms", pass, m, pass <= 10)
	mp := fmt.Sprintf("%.2f ms", probe)
	if b.Pass != nil && b.Pass.ProbeError != "" {
		e := b.Pass.ProbeError
		if len(e) > 100 {
			e = e[:100] + "..."
		}
		mp += " (a call failed: " + e + ")"
	}
	ts.add("9", b.Firewall+": endpoint calls during the passes: max <= 10 ms", probe, mp, probe <= 10)
}

func nan() float64 { return math.NaN() }

// startSeconds is when the start was done: the socket answered and the
// rules were in place; +Inf if they were not back 30 s after the answer.
func startSeconds(t startTime) float64 {
	if math.IsNaN(float64(t.RulesS)) && !math.IsNaN(float64(t.AnswerS)) {
		return math.Inf(1)
	}
	return max(float64(t.AnswerS), float64(t.RulesS))
}

func fmtStart(v float64) string {
	if math.IsInf(v, 1) {
		return "rules not back within 30 s of the answer"
	}
	return fmt.Sprintf("%.3f s", v)
}

// linearity is the cost per mapping at the largest count measured over
// that at the smallest.
func linearity(ps []mappingPoint) (float64, string) {
	var done []mappingPoint
	for _, p := range ps {
		if p.Skipped == "" && p.Err == "" {
			done = append(done, p)
		}
	}
	if len(done) < 2 {
		return nan(), ""
	}
	per := func(p mappingPoint) float64 {
		return (float64(p.PublishS) + float64(p.UnpublishS)) * 1e6 / float64(p.N)
	}
	first, last := done[0], done[len(done)-1]
	v := per(last) / per(first)
	return v, fmt.Sprintf("%.2fx (%.0f us at %d, %.0f us at %d)", v, per(first), first.N, per(last), last.N)
}

// printPorts prints phase 9.
func printPorts(w io.Writer, p *portsResult) {
	if p == nil {
		return
	}
	fmt.Fprintf(w, "\n9  ports and startup\n")
	if p.Publish != nil && len(p.Publish.First.Mynet)+len(p.Publish.First.Bridge) > 0 {
		t := &pairTable{tw: newTable(w)}
		fmt.Fprintln(t.tw, "#\tmeasure\tmynet\tbridge\tratio")
		t.pair("9", p.Publish.First, "%.2f")
		t.pair("9", p.Publish.Second, "%.2f")
		t.pair("9", p.Publish.Total, "%.2f")
		t.tw.Flush()
		fmt.Fprintf(w, "   mynet's firewall through dockerd: %s\n", p.HostFirewall)
		fmt.Fprintf(w, "   mynet's own time per docker run -p: %s; per docker rm -f: %s; %d answers 503\n", p.RunOwn.describe(), p.RmOwn.describe(), p.Busy)
	}
	for _, f := range p.Failures {
		fmt.Fprintf(w, "   failed: %s\n", f)
	}
	if c := p.Concurrent; c != nil {
		fmt.Fprintf(w, "   docker run --rm on another mynet network: alone %.3f s (median of %d), during port work %.3f s (median of %d, slowest %.2f s; %d port cycles of %s s): %.3fx; %d answers 503, %d failures\n",
			float64(c.AloneMedian), len(c.Alone), float64(c.DuringMedian), len(c.During), percentile(c.During, 100), c.PortCycles, fmtList(c.PortCycleS), float64(c.Ratio), c.Busy, c.FailedRuns)
		if c.FirstFailure != "" {
			fmt.Fprintf(w, "   first failure: %s\n", lastLines(c.FirstFailure, 3))
		}
	}
	for _, b := range p.Backends {
		printBackend(w, b)
	}
}

func printBackend(w io.Writer, b portsBackend) {
	fmt.Fprintf(w, "   socket API, firewall %s:\n", b.Firewall)
	if len(b.Mappings) > 0 {
		tw := newTable(w)
		fmt.Fprintln(tw, "   mappings on one endpoint\tpublish s\tunpublish s\tus per mapping (publish)\t")
		for _, m := range b.Mappings {
			switch {
			case m.Skipped != "":
				fmt.Fprintf(tw, "   %d\t-\t-\t-\tskipped: %s\n", m.N, m.Skipped)
			case m.Err != "":
				fmt.Fprintf(tw, "   %d\t%.2f\t%.2f\t-\tfailed: %s\n", m.N, float64(m.PublishS), float64(m.UnpublishS), lastLines(m.Err, 1))
			default:
				fmt.Fprintf(tw, "   %d\t%.2f\t%.2f\t%.0f\t\n", m.N, float64(m.PublishS), float64(m.UnpublishS), float64(m.PublishUs))
			}
		}
		tw.Flush()
	}
	if s := b.Startup; s != nil {
		fmt.Fprintf(w, "   startup with %d networks, %d endpoints, %d ports (built in %.1f s): socket answers %.3f s after the start, rules in place %s; after a flush: %.3f s, rules %s\n",
			s.Networks, s.Endpoints, s.Ports, float64(s.BuildS), float64(s.Restart.AnswerS), fmtRules(s.Restart), float64(s.AfterFlush.AnswerS), fmtRules(s.AfterFlush))
	}
	if pr := b.Pass; pr != nil {
		fmt.Fprintf(w, "   periodic passes over %.0f s, %.0f s apart: %d periodic, mean %.2f ms (each <= %.1f ms); %d recheck, mean %.2f ms (<= %.1f ms); an endpoint call every 20 ms meanwhile: p50 %.2f, p99 %.2f, max %.2f ms\n",
			pr.WindowS, pr.IntervalS, pr.Periodic.Count, float64(pr.Periodic.MeanMs), float64(pr.Periodic.MaxBoundMs),
			pr.Recheck.Count, float64(pr.Recheck.MeanMs), float64(pr.Recheck.MaxBoundMs), float64(pr.Probe.P50), float64(pr.Probe.P99), float64(pr.Probe.Max))
	}
	if b.Error != "" {
		fmt.Fprintf(w, "   error: %s\n", lastLines(b.Error, 3))
	}
}

func fmtRules(t startTime) string {
	switch {
	case math.IsNaN(float64(t.AnswerS)):
		return "not measured"
	case math.IsNaN(float64(t.RulesS)):
		return fmt.Sprintf("NOT within 30 s of the answer (%d words missing at the answer)", t.Missing)
	case t.Missing == 0 && t.Flushed > 0:
		return fmt.Sprintf("at the answer (the flush had taken %d words out)", t.Flushed)
	case t.Missing == 0:
		return "at the answer"
	}
	return fmt.Sprintf("at %.3f s (%d words missing at the answer)", float64(t.RulesS), t.Missing)
}

func fmtList(xs []float64) string {
	s := ""
	for i, x := range xs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%.1f", x)
	}
	if s == "" {
		return "-"
	}
	return s
}
