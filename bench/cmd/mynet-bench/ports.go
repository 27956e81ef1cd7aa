package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// portsResult is phase 9, "ports and startup" (issue 13's targets): a
// container publishing many non-identity-mapped ports through dockerd,
// mynet beside the bridge driver; a container start on another mynet
// network while such ports come and go; and, on the socket of a namespace
// instance for each firewall backend, many mappings on one endpoint, the
// startup with a large state and the periodic pass at that size.
type portsResult struct {
	Ports int `json:"ports"` // published by the docker run
	// HostFirewall is the backend the host instance chose (serve
	// --firewall auto follows dockerd).
	HostFirewall string            `json:"host_firewall,omitempty"`
	Publish      *splitResult      `json:"publish"`  // docker run -d -p / docker rm -f
	RunOwn       *pluginTime       `json:"run_own"`  // mynet's requests during its docker runs
	RmOwn        *pluginTime       `json:"rm_own"`   // and during its docker rm -f
	Busy         int               `json:"http_503"` // mynet's 503 answers during those
	Failures     []string          `json:"failures,omitempty"`
	Concurrent   *concurrentResult `json:"concurrent,omitempty"`
	Backends     []portsBackend    `json:"backends,omitempty"`
}

// concurrentResult is a container's `docker run --rm` on a second mynet
// network, alone and while a container with the ports starts and is
// removed on the first.
type concurrentResult struct {
	Alone        []float64 `json:"alone_s"`
	During       []float64 `json:"during_s"`
	AloneMedian  num       `json:"alone_median_s"`
	DuringMedian num       `json:"during_median_s"`
	Ratio        num       `json:"ratio"` // during / alone
	// WorstRatio is the slowest run during port work over the median
	// alone: "takes no longer" holds for every run, not the median.
	WorstRatio   num       `json:"worst_ratio"`
	PortCycles   int       `json:"port_cycles"`
	PortCycleS   []float64 `json:"port_cycle_s"` // docker run -p + docker rm -f, each
	Busy         int       `json:"http_503"`     // answers 503 from mynet in the window
	FailedRuns   int       `json:"failed_runs"`
	FirstFailure string    `json:"first_failure,omitempty"`
}

// pubArgs is the -p of the phase: host ports base.. to container ports
// base.., n of each, as one range.
func pubArgs(hostBase, ctrBase, n int) string {
	return fmt.Sprintf("%d-%d:%d-%d", hostBase, hostBase+n-1, ctrBase, ctrBase+n-1)
}

// portsDocker is phase 9's part on dockerd: run -p and rm -f beside the
// bridge driver, then a container start during the port work.
func (b *bench) portsDocker(ctx context.Context, sides []side, plugin, label string) error {
	cfg := b.cfg
	if b.rep.Ports == nil { // the socket part did not run
		b.rep.Ports = &portsResult{Ports: cfg.pubPorts}
	}
	res := b.rep.Ports
	res.HostFirewall = logValue(b.hostLog, "firewall backend", "backend")
	res.Publish = newSplit(fmt.Sprintf("docker run -d -p %s", pubArgs(cfg.pubHost, cfg.pubCtr, cfg.pubPorts)), "docker rm -f of it", "run + rm")
	logf("phase 9: docker run -d -p with %d ports and docker rm -f, %d trial(s) per network", cfg.pubPorts, cfg.pubTrials)
	runOwn, rmOwn := &pluginTime{Ops: map[string]opTime{}}, &pluginTime{Ops: map[string]opTime{}}
	busyBefore, err := b.hostMetrics.busy(ctx)
	if err != nil {
		return err
	}
	for t := range cfg.pubTrials {
		for _, s := range sides {
			name := fmt.Sprintf("mnbench-%s-pub%d%s", b.runID, t, s.label[:1])
			from := logSize(b.hostLog)
			up, down, err := b.portContainer(ctx, s.network, name, label)
			if err != nil {
				res.Failures = append(res.Failures, fmt.Sprintf("%s trial %d: %v", s.label, t+1, err))
				logf("phase 9: %s trial %d failed: %v", s.label, t+1, err)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				continue
			}
			res.Publish.add(s.mynet, up.d, down.d)
			if s.mynet {
				runOwn.merge(readPluginTimeRange(b.hostLog, from, up.logEnd))
				rmOwn.merge(readPluginTimeRange(b.hostLog, up.logEnd, down.logEnd))
			}
			logf("phase 9: %s trial %d: run %.2f s, rm %.2f s", s.label, t+1, up.d.Seconds(), down.d.Seconds())
			settle(ctx)
		}
	}
	res.Publish.finish()
	busyAfter, err := b.hostMetrics.busy(ctx)
	if err != nil {
		return err
	}
	res.Busy = int(busyAfter - busyBefore)
	res.RunOwn, res.RmOwn = runOwn.per(len(res.Publish.First.Mynet)), rmOwn.per(len(res.Publish.Second.Mynet))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c, err := b.portsConcurrent(ctx, sides[0].network, plugin, label)
	res.Concurrent = c
	return err
}

// stepTime is a timed docker command and where the plugin's log ended
// after it.
type stepTime struct {
	d      time.Duration
	logEnd int64
}

// portContainer starts a container publishing the phase's ports on
// network and removes it, timing both. The container is removed even
// when its start failed.
func (b *bench) portContainer(ctx context.Context, network, name, label string) (up, down stepTime, err error) {
	cfg := b.cfg
	up.d, _, err = timed(ctx, "docker", "run", "-d", "--name", name, "--label", label, "--net", network,
		"-p", pubArgs(cfg.pubHost, cfg.pubCtr, cfg.pubPorts), cfg.image, "sleep", "3600")
	up.logEnd = logSize(b.hostLog)
	var rmErr error
	down.d, _, rmErr = timed(ctx, "docker", "rm", "-f", name)
	down.logEnd = logSize(b.hostLog)
	if err != nil {
		return up, down, fmt.Errorf("docker run: %w", err)
	}
	if rmErr != nil {
		return up, down, fmt.Errorf("docker rm -f: %w", rmErr)
	}
	return up, down, nil
}

// portsConcurrent times `docker run --rm IMAGE true` on a second mynet
// network, first alone, then while the ports are published and
// unpublished on network again and again, until the runs are done and at
// least one port cycle is complete.
func (b *bench) portsConcurrent(ctx context.Context, network, plugin, label string) (*concurrentResult, error) {
	cfg := b.cfg
	other := "mnbench-" + b.runID + "-mynet2"
	if _, err := docker(ctx, "network", "create", "--label", label, "-d", plugin, "--ipam-driver", plugin, other); err != nil {
		return nil, err
	}
	defer docker(context.WithoutCancel(ctx), "network", "rm", other)
	res := &concurrentResult{}
	logf("phase 9: %d x docker run --rm on a second mynet network alone, then while %d ports come and go on the first", cfg.pubRuns, cfg.pubPorts)
	runOnce := func() (float64, error) {
		d, _, err := timed(ctx, "docker", "run", "--rm", "--label", label, "--net", other, cfg.image, "true")
		return d.Seconds(), err
	}
	if _, err := runOnce(); err != nil { // warm-up
		return res, err
	}
	for range cfg.pubRuns {
		d, err := runOnce()
		if err != nil {
			return res, err
		}
		res.Alone = append(res.Alone, d)
	}
	busyBefore, err := b.hostMetrics.busy(ctx)
	if err != nil {
		return res, err
	}
	b.concurrentWindow(ctx, network, label, res, runOnce)
	busyAfter, err := b.hostMetrics.busy(ctx)
	if err != nil {
		return res, err
	}
	res.Busy = int(busyAfter - busyBefore)
	res.AloneMedian, res.DuringMedian = num(median(res.Alone)), num(median(res.During))
	res.Ratio = num(ratio(median(res.During), median(res.Alone)))
	res.WorstRatio = num(ratio(percentile(res.During, 100), median(res.Alone)))
	logf("phase 9: docker run --rm alone %.3f s, during port work %.3f s (%d runs, %d port cycles), ratio %.2f; %d answers 503",
		float64(res.AloneMedian), float64(res.DuringMedian), len(res.During), res.PortCycles, float64(res.Ratio), res.Busy)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

// concurrentWindow runs port cycles on one goroutine and timed runs on
// this one, for as long as the cycles go on: they go on until a cycle ends
// with at least -pub-runs runs done.
func (b *bench) concurrentWindow(ctx context.Context, network, label string, res *concurrentResult, runOnce func() (float64, error)) {
	var mu sync.Mutex
	failed := func(what string, err error) {
		res.FailedRuns++
		if res.FirstFailure == "" {
			res.FirstFailure = what + ": " + err.Error()
		}
	}
	cyclesDone := make(chan struct{})
	go func() {
		defer close(cyclesDone)
		for i := 0; ctx.Err() == nil; i++ {
			up, down, err := b.portContainer(ctx, network, fmt.Sprintf("mnbench-%s-conc%d", b.runID, i), label)
			mu.Lock()
			res.PortCycles++
			if err != nil {
				failed("port cycle", err)
			} else {
				res.PortCycleS = append(res.PortCycleS, (up.d + down.d).Seconds())
			}
			enough := err != nil || len(res.During) >= b.cfg.pubRuns // a failed cycle ends the window
			mu.Unlock()
			if enough {
				return
			}
		}
	}()
	for ctx.Err() == nil {
		select {
		case <-cyclesDone:
			return
		default:
		}
		d, err := runOnce()
		mu.Lock()
		if err != nil {
			failed("docker run --rm", err)
		} else {
			res.During = append(res.During, d)
		}
		mu.Unlock()
	}
	<-cyclesDone
}

// merge adds q's calls into p (p.Units is set by per).
func (p *pluginTime) merge(q *pluginTime) {
	if q == nil {
		return
	}
	for op, t := range q.Ops {
		cur := p.Ops[op]
		cur.Calls += t.Calls
		cur.TotalMs += t.TotalMs
		p.Ops[op] = cur
	}
}

// per fixes p's unit count and derives the means and the total per unit.
func (p *pluginTime) per(units int) *pluginTime {
	p.Units = units
	var total float64
	for op, t := range p.Ops {
		t.MeanMs = num(float64(t.TotalMs) / float64(max(t.Calls, 1)))
		p.Ops[op] = t
		total += float64(t.TotalMs)
	}
	p.PerUnitMs = num(math.NaN())
	if units > 0 {
		p.PerUnitMs = num(total / float64(units))
	}
	return p
}

// describe is "12.3 ms (ProgramExternalConnectivity 10.1, Join 0.2, ...)",
// the three largest ops per unit.
func (p *pluginTime) describe() string {
	if p == nil || p.Units == 0 {
		return "not measured"
	}
	var top []string
	for i, op := range p.topOps() {
		if i == 3 {
			break
		}
		short := op[strings.LastIndex(op, ".")+1:]
		top = append(top, short+" "+strconv.FormatFloat(float64(p.Ops[op].TotalMs)/float64(p.Units), 'f', 1, 64))
	}
	return fmt.Sprintf("%.1f ms (%s)", float64(p.PerUnitMs), strings.Join(top, ", "))
}

// logValue is the value of key on the first line of the log at path
// whose message is msg, "" if none.
func logValue(path, msg, key string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if !strings.Contains(l, `msg="`+msg+`"`) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return strings.Trim(v, `"`)
			}
		}
	}
	return ""
}
