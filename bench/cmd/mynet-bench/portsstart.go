package main

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
	"sync"
	"time"
)

// startupResult is `mynet serve` started again on a state of Networks
// networks, Endpoints endpoints and Ports published ports, with its rules
// in place and after they were flushed.
type startupResult struct {
	Networks   int       `json:"networks"`
	Endpoints  int       `json:"endpoints"`
	Ports      int       `json:"ports"`
	BuildS     num       `json:"build_s"` // building that state on the socket
	Restart    startTime `json:"restart"`
	AfterFlush startTime `json:"after_flush"`
}

// startTime is one timed start, from the exec of `ip netns exec ... mynet
// serve` on.
type startTime struct {
	// AnswerS is when the socket first answered Plugin.Activate.
	AnswerS num `json:"answer_s"`
	// RulesS is when the namespace's ruleset was first seen equal to the
	// one before the stop: AnswerS if it was at the first look after the
	// answer, NaN if not within 30 s of the answer.
	RulesS num `json:"rules_s"`
	// Missing counts the words of the ruleset before the stop that the
	// first look after the answer lacked.
	Missing int `json:"missing_at_answer"`
	// StopS is how long the instance before took to exit on SIGTERM.
	StopS num `json:"stop_s"`
	// Flushed counts the words the flush took out of it, if there was one.
	Flushed int `json:"flushed,omitempty"`
}

// passResult is the periodic reconcile with nothing to repair, at the
// startup state's size.
type passResult struct {
	WindowS   float64   `json:"window_s"`
	IntervalS float64   `json:"interval_s"`
	Periodic  passStats `json:"periodic"`
	Recheck   passStats `json:"recheck"`
	Probe     callStats `json:"probe"` // an endpoint call every 20 ms meanwhile
	// ProbeError is the first error a probe call got (a 503 at the
	// request's bound when a pass held it up that long).
	ProbeError string `json:"probe_error,omitempty"`
}

type passStats struct {
	Count      int `json:"count"`
	MeanMs     num `json:"mean_ms"`
	MaxBoundMs num `json:"max_at_most_ms"` // the histogram bucket holding the largest
}

// startup builds the state, then starts mynet again on it twice: as it
// is, and after its rules were flushed while it was stopped.
func (pb *portsBackend) startup(ctx context.Context) error {
	cfg := pb.b.cfg
	unmeasured := startTime{AnswerS: num(math.NaN()), RulesS: num(math.NaN()), StopS: num(math.NaN())}
	st := &startupResult{Networks: cfg.startNets, Endpoints: cfg.startEps, Ports: cfg.startPorts, Restart: unmeasured, AfterFlush: unmeasured}
	pb.Startup = st
	logf("phase 9: %s: building %d networks, %d endpoints, %d published ports", pb.Firewall, st.Networks, st.Endpoints, st.Ports)
	start := time.Now()
	if err := pb.build(ctx, st); err != nil {
		return fmt.Errorf("building the startup state: %w", err)
	}
	st.BuildS = num(time.Since(start).Seconds())
	before, err := pb.ruleset(ctx)
	if err != nil {
		return err
	}
	logf("phase 9: %s: state built in %.1f s; restarting mynet", pb.Firewall, float64(st.BuildS))
	if st.Restart, err = pb.timedRestart(ctx, "restart", before, nil); err != nil {
		return err
	}
	if st.AfterFlush, err = pb.timedRestart(ctx, "after-flush", before, pb.flushRules); err != nil {
		return err
	}
	logf("phase 9: %s: socket answers %.3f s after start (rules %.3f s), %.3f s after a flush (rules %.3f s)", pb.Firewall,
		float64(st.Restart.AnswerS), float64(st.Restart.RulesS), float64(st.AfterFlush.AnswerS), float64(st.AfterFlush.RulesS))
	return nil
}

// build creates the networks, spreads the endpoints over them and
// publishes the ports, one host port each, over the endpoints, with four
// requests at a time as a busy engine would.
func (pb *portsBackend) build(ctx context.Context, st *startupResult) error {
	c := pb.inst.client
	for i := range st.Networks {
		n, err := createNetwork(ctx, c, fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256))
		if err != nil {
			return fmt.Errorf("network %d: %w", i+1, err)
		}
		pb.nets = append(pb.nets, n)
	}
	eps := make([]endpoint, st.Endpoints)
	err := parallel(ctx, st.Endpoints, func(i int) error {
		e, err := pb.nets[i%len(pb.nets)].up(ctx, c, nil)
		eps[i] = e
		return err
	})
	if err != nil || st.Ports == 0 {
		return err
	}
	return parallel(ctx, min(st.Ports, st.Endpoints), func(i int) error {
		var pm, exposed []map[string]any
		for p := i; p < st.Ports; p += st.Endpoints {
			pm = append(pm, map[string]any{"Proto": 6, "IP": "", "Port": 8000 + p, "HostIP": "", "HostPort": 40000 + p, "HostPortEnd": 40000 + p})
			exposed = append(exposed, map[string]any{"Proto": 6, "Port": 8000 + p})
		}
		return publishMap(ctx, c, pb.nets[i%len(pb.nets)], eps[i], pm, exposed)
	})
}

// parallel runs fn(0..n-1) on four goroutines and returns the first error.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if ctx.Err() != nil {
					errc <- ctx.Err()
					return
				}
				if err := fn(i); err != nil {
					errc <- fmt.Errorf("item %d: %w", i+1, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// timedRestart stops the instance, runs meanwhile (nil: nothing), starts
// it again on the same state and times the start until the socket
// answers and until the ruleset is the one before the stop.
func (pb *portsBackend) timedRestart(ctx context.Context, label string, before map[string]int, meanwhile func(context.Context) error, extra ...string) (startTime, error) {
	t := startTime{AnswerS: num(math.NaN()), RulesS: num(math.NaN())} // until measured
	// A pass under way finishes before mynet exits: with a large state
	// under iptables that takes longer than the cleanup's 10 s.
	stopStart := time.Now()
	if err := pb.inst.stopWithin(2 * time.Minute); err != nil {
		return t, err
	}
	t.StopS = num(time.Since(stopStart).Seconds())
	if meanwhile != nil {
		if err := meanwhile(ctx); err != nil {
			return t, err
		}
		// Without this, a comparison that cannot fail would pass for a
		// repair.
		now, err := pb.ruleset(ctx)
		if err != nil {
			return t, err
		}
		if t.Flushed = missingWords(before, now); t.Flushed == 0 {
			return t, fmt.Errorf("the ruleset of %s did not change with the flush", pb.ns)
		}
	}
	start := time.Now()
	inst, err := launch(pb.b.mynetBin, pb.name, pb.ns, pb.b.workDir, pb.name+"-"+label+".log", append(pb.extra, extra...)...)
	if err != nil {
		return t, err
	}
	pb.inst = inst
	if err := inst.waitReady(ctx, 2*time.Millisecond, 2*time.Minute); err != nil {
		return t, err
	}
	t.AnswerS = num(time.Since(start).Seconds())
	for first, until := true, time.Now().Add(30*time.Second); first || time.Now().Before(until) && ctx.Err() == nil; first = false {
		now, err := pb.ruleset(ctx)
		if err != nil {
			return t, err
		}
		missing := missingWords(before, now)
		if first {
			t.Missing = missing
		}
		if missing == 0 {
			t.RulesS = t.AnswerS
			if !first {
				t.RulesS = num(time.Since(start).Seconds())
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return t, nil
}

var (
	countersRE = regexp.MustCompile(`\[\d+:\d+\]|counter packets \d+ bytes \d+`)
	wordSep    = regexp.MustCompile(`[\s,{}]+`)
)

// ruleset is the namespace's firewall as a multiset of words: the
// iptables and ip6tables tables and the nftables ruleset, without
// comments and counters. As words, sets whose elements are listed in
// another order or wrapped otherwise still compare equal.
func (pb *portsBackend) ruleset(ctx context.Context) (map[string]int, error) {
	words := map[string]int{}
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := runCmd(ctx, nil, "ip", append([]string{"netns", "exec", pb.ns}, cmd...)...)
		if err != nil {
			return nil, err
		}
		addWords(words, out)
	}
	return words, nil
}

// addWords counts the words of a ruleset listing into words.
func addWords(words map[string]int, listing string) {
	for _, l := range strings.Split(listing, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		for _, w := range wordSep.Split(countersRE.ReplaceAllString(l, ""), -1) {
			if w != "" {
				words[w]++
			}
		}
	}
}

// missingWords counts the words of want that got lacks.
func missingWords(want, got map[string]int) int {
	n := 0
	for w, c := range want {
		n += max(0, c-got[w])
	}
	return n
}

// periodic starts mynet again with a short reconcile interval and, over
// -pass-window, reads the passes it makes with nothing to repair from its
// metrics while an endpoint call every 20 ms shows whether they hold
// endpoint calls up.
func (pb *portsBackend) periodic(ctx context.Context) error {
	cfg := pb.b.cfg
	interval := time.Second
	if _, err := pb.timedRestart(ctx, "passes", nil, nil, "--reconcile-interval", interval.String()); err != nil {
		return err
	}
	// The first pass after the start takes the fingerprint in.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(interval + interval/2):
	}
	logf("phase 9: %s: watching the periodic passes for %v", pb.Firewall, cfg.passWindow)
	m0, err := pb.metrics.scrape(ctx)
	if err != nil {
		return err
	}
	probe, failed, err := probeCalls(ctx, pb.inst.client, pb.nets[0], cfg.passWindow)
	if err != nil {
		return err
	}
	m1, err := pb.metrics.scrape(ctx)
	if err != nil {
		return err
	}
	pr := &passResult{WindowS: cfg.passWindow.Seconds(), IntervalS: interval.Seconds(), Probe: probe}
	if failed != nil {
		pr.ProbeError = failed.Error()
	}
	stats := func(kind string) passStats {
		const name = "mynet_reconcile_pass_seconds"
		label := `pass="` + kind + `"`
		h := histogram(m1, name, label).since(histogram(m0, name, label))
		ps := passStats{Count: int(h.Count), MeanMs: num(math.NaN()), MaxBoundMs: num(1000 * h.maxBound())}
		if h.Count > 0 {
			ps.MeanMs = num(1000 * h.Sum / h.Count)
		}
		return ps
	}
	pr.Periodic, pr.Recheck = stats("periodic"), stats("recheck")
	pb.Pass = pr
	logf("phase 9: %s: %d periodic passes, mean %.2f ms; %d rechecks, mean %.2f ms; endpoint call max %.2f ms", pb.Firewall,
		pr.Periodic.Count, float64(pr.Periodic.MeanMs), pr.Recheck.Count, float64(pr.Recheck.MeanMs), float64(pr.Probe.Max))
	if pr.Periodic.Count+pr.Recheck.Count == 0 {
		return fmt.Errorf("no reconcile pass seen in %v (is mynet_reconcile_pass_seconds exported by this binary?)", cfg.passWindow)
	}
	return nil
}
