package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// maxEndpoints is mynet's limit per network (driver.Config.MaxEndpoints).
const maxEndpoints = 1000

// apiResult is phase 4 at one concurrency.
type apiResult struct {
	Concurrency  int                  `json:"concurrency"`
	Cycles       int                  `json:"cycles"`
	Seconds      num                  `json:"seconds"`
	CyclesPerSec num                  `json:"cycles_per_s"`
	Calls        map[string]callStats `json:"calls"`
	Cycle        callStats            `json:"cycle"`
	// WorstP99 is the largest p99 of the six calls, the figure the target
	// is about.
	WorstP99  num    `json:"worst_call_p99_ms"`
	WorstCall string `json:"worst_call"`
}

// scalePoint is phase 5 at one endpoint count: cycles of the Nth endpoint
// with N-1 alive.
type scalePoint struct {
	N           int                  `json:"n"`
	CycleMs     []float64            `json:"cycle_ms"`
	CycleMedian num                  `json:"cycle_median_ms"`
	Calls       map[string]callStats `json:"calls"`
}

type scalingResult struct {
	Points []scalePoint `json:"points"`
	// Probes are calls every 20 ms, right after a change, that take the
	// lock container starts and stops share and the periodic reconcile
	// holds alone (a DeleteEndpoint of an endpoint mynet does not know:
	// nothing to do but the lookup): they show how long background work
	// holds endpoint calls up.
	Probes []lockProbe `json:"lock_probes,omitempty"`
	// Ratio is the median cycle at the largest N over the smallest.
	Ratio      num `json:"ratio_last_first"`
	FirstN     int `json:"first_n"`
	LastN      int `json:"last_n"`
	FillPerSec num `json:"fill_endpoints_per_s"`
}

// ruleCount is phase 6: mynet's rules (-A lines mentioning mynet in
// iptables-save and ip6tables-save of the scratch namespace).
type ruleCount struct {
	Endpoints int `json:"endpoints"`
	Ports     int `json:"published_ports"`
	IPv4      int `json:"ipv4_rules"`
	IPv6      int `json:"ipv6_rules"`
	Total     int `json:"total"` // iptables + ip6tables, what target 6 is about
	// The anti-spoofing filter lives in nftables bridge tables named
	// mynet*, outside iptables: fixed rules, and set elements per
	// endpoint.
	NftChains int `json:"nft_bridge_chains"`
	NftRules  int `json:"nft_bridge_rules"`
}

type memoryResult struct {
	StartRSS     int64 `json:"start_rss_bytes"`     // just started, no network
	IdleRSS      int64 `json:"idle_rss_bytes"`      // one network, no endpoint
	AfterAPIRSS  int64 `json:"after_api_rss_bytes"` // after phase 4
	Endpoints    int   `json:"endpoints"`           // alive when RSS was read
	EndpointsRSS int64 `json:"endpoints_rss_bytes"` // with Endpoints alive
	PeakRSS      int64 `json:"peak_rss_bytes"`      // VmHWM at that point
	HostIdleRSS  int64 `json:"host_instance_rss_bytes,omitempty"`
}

type lockProbe struct {
	N       int       `json:"n"` // endpoints alive
	Seconds float64   `json:"seconds"`
	Call    callStats `json:"call"`
}

// nsRun is one run of the namespace phases: the instance in the scratch
// namespace, its network, and the live endpoints phases 5, 6 and 8 share.
type nsRun struct {
	b        *bench
	ns       string
	inst     *instance
	c        *pluginClient
	prof     *profiler // nil without -pprof
	n        benchNet
	mem      *memoryResult
	alive    []endpoint
	fillTime time.Duration // spent creating alive
}

// netnsPhases runs phases 4, 5, 6 and 8 against a mynet instance in a
// scratch network namespace: its links and rules live and die there, and
// only its socket (and state under the work directory) is on the host.
func (b *bench) netnsPhases(ctx context.Context) error {
	mark := b.cleanup.len()
	defer b.cleanup.runTo(mark)
	r, err := b.startNetns(ctx)
	if err != nil {
		return err
	}
	r.readRSS(&r.mem.StartRSS)
	if r.n, err = createNetwork(ctx, r.c, "10.200.0.0/16"); err != nil {
		return fmt.Errorf("create the scratch network: %w", err)
	}
	r.readRSS(&r.mem.IdleRSS)
	b.rep.Memory = r.mem
	if b.cfg.phases["6"] {
		if err := r.countRules(ctx, 0, 0); err != nil {
			return err
		}
	}
	if b.cfg.phases["4"] {
		if err := r.apiPhase(ctx); err != nil {
			return err
		}
	}
	if !b.cfg.phases["5"] && !b.cfg.phases["6"] && !b.cfg.phases["8"] {
		return nil
	}
	if err := r.growPhases(ctx); err != nil {
		return err
	}
	// The endpoints are not deleted one by one: stopping mynet and deleting
	// the namespace (the deferred cleanup) removes their veths and rules,
	// and the state directory goes with the work directory.
	logf("phases 4-6,8 done; %d endpoints go with the namespace", len(r.alive))
	return nil
}

// startNetns creates the scratch namespace and starts mynet in it, both
// undone by the bench's cleanup stack.
func (b *bench) startNetns(ctx context.Context) (*nsRun, error) {
	r := &nsRun{b: b, ns: "mynet-bench-" + b.runID, mem: &memoryResult{}}
	if _, err := runCmd(ctx, nil, "ip", "netns", "add", r.ns); err != nil {
		return nil, err
	}
	b.cleanup.push("delete netns "+r.ns, func(ctx context.Context) error {
		_, err := runCmd(ctx, nil, "ip", "netns", "del", r.ns)
		return err
	})
	if _, err := runCmd(ctx, nil, "ip", "netns", "exec", r.ns, "ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	logf("phases 4-6,8: mynet in network namespace %s", r.ns)
	var extra []string
	if b.cfg.pprofDir != "" {
		if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
			return nil, err
		}
		sock := filepath.Join(b.workDir, "ns-metrics.sock")
		extra = []string{"--pprof", "--metrics-socket", sock}
		r.prof = newProfiler(b.cfg.pprofDir, sock)
	}
	inst, err := startInstance(ctx, b.mynetBin, "mynet-bench-ns-"+b.runID, r.ns, b.workDir, extra...)
	if err != nil {
		return nil, err
	}
	b.cleanup.push("stop mynet "+inst.name, inst.stop)
	r.inst, r.c = inst, inst.client
	return r, nil
}

// readRSS stores the instance's resident set in into, and its peak in
// the memory result, after letting the runtime settle after a burst.
func (r *nsRun) readRSS(into *int64) {
	time.Sleep(500 * time.Millisecond)
	if cur, peak, err := rss(r.inst.pid()); err == nil {
		*into, r.mem.PeakRSS = cur, peak
	} else {
		logf("rss: %v", err)
	}
}

// countRules is phase 6 at one point: mynet's iptables rules in the
// namespace, and its nftables bridge filter, with eps endpoints and
// ports published ports.
func (r *nsRun) countRules(ctx context.Context, eps, ports int) error {
	rc := ruleCount{Endpoints: eps, Ports: ports}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := runCmd(ctx, nil, "ip", "netns", "exec", r.ns, tool)
		if err != nil {
			return err
		}
		if tool == "iptables-save" {
			rc.IPv4 = countMynetRules(out)
		} else {
			rc.IPv6 = countMynetRules(out)
		}
	}
	rc.Total = rc.IPv4 + rc.IPv6
	if out, err := runCmd(ctx, nil, "ip", "netns", "exec", r.ns, "nft", "list", "ruleset"); err == nil {
		rc.NftChains, rc.NftRules = countNftBridge(out)
	}
	logf("phase 6: %d endpoints, %d published ports: %d iptables rules (%d IPv4, %d IPv6); nftables bridge filter: %d chains, %d rules",
		eps, ports, rc.Total, rc.IPv4, rc.IPv6, rc.NftChains, rc.NftRules)
	r.b.rep.Rules = append(r.b.rep.Rules, rc)
	return nil
}

// apiPhase is phase 4: endpoint cycles at each concurrency.
func (r *nsRun) apiPhase(ctx context.Context) error {
	cfg := r.b.cfg
	for _, conc := range cfg.apiConc {
		logf("phase 4: %d endpoint cycles at concurrency %d", cfg.apiCycles, conc)
		profDone := func() {}
		if r.prof != nil {
			profDone = r.prof.during(ctx, fmt.Sprintf("phase4-c%d", conc))
		}
		res, err := runCycles(ctx, r.c, r.n, conc, cfg.apiCycles)
		profDone()
		if err != nil {
			return fmt.Errorf("phase 4 at concurrency %d: %w", conc, err)
		}
		logf("phase 4: concurrency %d: %.1f cycles/s, cycle p50 %.2f ms, worst call p99 %.2f ms (%s)", conc, float64(res.CyclesPerSec), float64(res.Cycle.P50), float64(res.WorstP99), res.WorstCall)
		r.b.rep.API = append(r.b.rep.API, res)
	}
	r.readRSS(&r.mem.AfterAPIRSS)
	return nil
}

// fillTo brings the live endpoints up to target, four at a time.
func (r *nsRun) fillTo(ctx context.Context, target int) error {
	need := target - len(r.alive)
	if need <= 0 {
		return nil
	}
	start := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	next := make(chan struct{}, need)
	for range need {
		next <- struct{}{}
	}
	close(next)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				e, err := r.n.up(ctx, r.c, nil)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				r.alive = append(r.alive, e)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.fillTime += time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("creating endpoint %d: %w", len(r.alive)+1, err)
	}
	return nil
}

// growSteps returns the endpoint counts phases 5, 6 and 8 stop at, in
// order, and which of them are scaling points and rule counts.
func growSteps(cfg config, maxN int) (steps []int, scaleAt, ruleAt map[int]bool) {
	ruleAt, scaleAt = map[int]bool{}, map[int]bool{}
	if cfg.phases["6"] {
		for _, r := range []int{100, maxEndpoints} {
			if r <= maxN {
				ruleAt[r] = true
			}
		}
	}
	if cfg.phases["5"] {
		for _, p := range cfg.scalePoints {
			scaleAt[p] = true
		}
	}
	for k := range scaleAt {
		steps = append(steps, k)
	}
	for k := range ruleAt {
		if !scaleAt[k] {
			steps = append(steps, k)
		}
	}
	if cfg.phases["8"] && !slices.Contains(steps, maxN) {
		steps = append(steps, maxN)
	}
	slices.Sort(steps)
	return steps, scaleAt, ruleAt
}

// growPhases runs phases 5, 6 and 8 on one growing set of live endpoints.
func (r *nsRun) growPhases(ctx context.Context) error {
	cfg := r.b.cfg
	maxN := cfg.scalePoints[len(cfg.scalePoints)-1]
	steps, scaleAt, ruleAt := growSteps(cfg, maxN)
	scaling := &scalingResult{}
	for _, target := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if scaleAt[target] {
			if err := r.scalePoint(ctx, scaling, target, maxN); err != nil {
				return err
			}
		}
		if err := r.fillTo(ctx, target); err != nil {
			return err
		}
		if ruleAt[target] {
			if err := r.rulePoint(ctx); err != nil {
				return err
			}
		}
		if target == maxN && cfg.phases["8"] {
			r.mem.Endpoints = len(r.alive)
			r.readRSS(&r.mem.EndpointsRSS)
			logf("phase 8: RSS %.1f MiB with %d endpoints (idle %.1f MiB)", float64(r.mem.EndpointsRSS)/(1<<20), len(r.alive), float64(r.mem.IdleRSS)/(1<<20))
		}
	}
	if len(scaling.Points) > 0 {
		first, last := scaling.Points[0], scaling.Points[len(scaling.Points)-1]
		scaling.FirstN, scaling.LastN = first.N, last.N
		scaling.Ratio = num(ratio(float64(last.CycleMedian), float64(first.CycleMedian)))
	}
	if r.fillTime > 0 {
		scaling.FillPerSec = num(float64(len(r.alive)) / r.fillTime.Seconds())
	}
	return nil
}

// scalePoint is phase 5 at one endpoint count: cycles of the target'th
// endpoint with target-1 alive, and at the first and last point a probe
// of the endpoint lock.
func (r *nsRun) scalePoint(ctx context.Context, scaling *scalingResult, target, maxN int) error {
	cfg := r.b.cfg
	if err := r.fillTo(ctx, target-1); err != nil {
		return err
	}
	rec := newRecorder()
	p := scalePoint{N: target}
	for range cfg.scaleCycles {
		d, err := r.n.cycle(ctx, r.c, rec)
		if err != nil {
			return fmt.Errorf("phase 5: cycle at N=%d: %w", target, err)
		}
		p.CycleMs = append(p.CycleMs, millis(d))
	}
	p.CycleMedian = num(median(p.CycleMs))
	p.Calls = rec.stats()
	logf("phase 5: endpoint %d (%d alive): cycle median %.2f ms", target, target-1, float64(p.CycleMedian))
	scaling.Points = append(scaling.Points, p)
	r.b.rep.Scaling = scaling
	if cfg.lockProbe <= 0 || (target != cfg.scalePoints[0] && target != maxN) || len(r.alive) == 0 {
		return nil
	}
	logf("phase 5: probing the endpoint lock for %v with %d endpoints", cfg.lockProbe, len(r.alive))
	lp, err := probeLock(ctx, r.c, r.n, r.alive[0], len(r.alive), cfg.lockProbe)
	if err != nil {
		return fmt.Errorf("phase 5: lock probe: %w", err)
	}
	logf("phase 5: probe p50 %.2f ms, p99 %.2f ms, max %.2f ms with %d endpoints", float64(lp.Call.P50), float64(lp.Call.P99), float64(lp.Call.Max), lp.N)
	scaling.Probes = append(scaling.Probes, lp)
	return nil
}

// rulePoint is phase 6 with the live endpoints: rules without and with
// published ports.
func (r *nsRun) rulePoint(ctx context.Context) error {
	if err := r.countRules(ctx, len(r.alive), 0); err != nil {
		return err
	}
	ports := min(r.b.cfg.ports, len(r.alive))
	if ports <= 0 {
		return nil
	}
	if err := publish(ctx, r.c, r.n, r.alive[:ports]); err != nil {
		return fmt.Errorf("phase 6: publishing ports: %w", err)
	}
	if err := r.countRules(ctx, len(r.alive), ports); err != nil {
		return err
	}
	if err := revoke(ctx, r.c, r.n, r.alive[:ports]); err != nil {
		return fmt.Errorf("phase 6: unpublishing ports: %w", err)
	}
	return nil
}
