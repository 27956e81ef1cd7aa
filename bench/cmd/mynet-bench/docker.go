package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// splitResult is an operation made of two timed parts (start and remove,
// create and rm), in seconds.
type splitResult struct {
	First  *pairResult `json:"first"`
	Second *pairResult `json:"second"`
	Total  *pairResult `json:"total"` // Total.Plugin: mynet's time in the phase
}

func newSplit(first, second, total string) *splitResult {
	return &splitResult{First: &pairResult{Op: first, Unit: "s"}, Second: &pairResult{Op: second, Unit: "s"}, Total: &pairResult{Op: total, Unit: "s"}}
}

func (s *splitResult) add(mynet bool, a, b time.Duration) {
	s.First.add(mynet, a.Seconds())
	s.Second.add(mynet, b.Seconds())
	s.Total.add(mynet, (a + b).Seconds())
}

func (s *splitResult) finish() *splitResult {
	s.First.finish()
	s.Second.finish()
	s.Total.finish()
	return s
}

// side is one of the two networks compared: mynet's or the built-in bridge's.
type side struct {
	mynet   bool
	label   string // "mynet" or "bridge"
	network string
}

// dockerPhases runs phases 1, 2, 3 and 7 on dockerd, with a mynet
// instance of its own on the host, while holding the docker lock.
func (b *bench) dockerPhases(ctx context.Context) error {
	mark := b.cleanup.len()
	defer b.cleanup.runTo(mark)
	waitStart := time.Now()
	release, err := lockFile(ctx, b.cfg.dockerLock)
	b.rep.LockWait = time.Since(waitStart).Seconds()
	if err != nil {
		return err
	}
	b.cleanup.push("release "+b.cfg.dockerLock, func(context.Context) error { release(); return nil })
	if _, err := docker(ctx, "version", "--format", "{{.Server.Version}}"); err != nil {
		return fmt.Errorf("the docker engine does not answer: %w", err)
	}
	label := "mynet-bench=" + b.runID
	if err := b.ensureBusybox(ctx); err != nil {
		return err
	}
	name := "mynet-bench-" + b.runID
	inst, err := startInstance(ctx, b.mynetBin, name, "", b.workDir, b.hostArgs(name)...)
	if err != nil {
		return err
	}
	b.cleanup.push("stop mynet "+name, func(ctx context.Context) error {
		err := b.checkHostInstanceEmpty(ctx, inst)
		err = errors.Join(err, inst.stop(ctx))
		return errors.Join(err, b.checkHostLeftovers(ctx, inst))
	})
	b.cleanup.push("remove labelled networks", func(ctx context.Context) error { return removeLabelled(ctx, "network", label) })
	b.cleanup.push("remove labelled containers", func(ctx context.Context) error { return removeLabelled(ctx, "container", label) })
	b.hostLog = inst.logPath
	logf("phases 1-3,7: mynet instance %s on the host, state %s", name, inst.stateDir)
	if cur, _, err := rss(inst.pid()); err == nil && b.rep.Memory != nil {
		b.rep.Memory.HostIdleRSS = cur
	}

	sides := []side{{true, "mynet", "mnbench-" + b.runID + "-mynet"}, {false, "bridge", "mnbench-" + b.runID + "-bridge"}}
	for _, s := range sides {
		args := []string{"network", "create", "--label", label, "-d", "bridge"}
		if s.mynet {
			args = []string{"network", "create", "--label", label, "-d", name, "--ipam-driver", name}
		}
		if _, err := docker(ctx, append(args, s.network)...); err != nil {
			return err
		}
	}

	var errs []error
	phase := func(p string, fn func() error) {
		if b.cfg.phases[p] && ctx.Err() == nil {
			if err := fn(); err != nil {
				errs = append(errs, fmt.Errorf("phase %s: %w", p, err))
				logf("phase %s FAILED: %v", p, err)
			}
		}
	}
	phase("1", func() error { return b.lifecycle(ctx, sides, label) })
	phase("2", func() error { return b.parallelStart(ctx, sides, label) })
	phase("3", func() error { return b.netCreate(ctx, name, label) })
	phase("7", func() error { return b.dataPlane(ctx, sides, label) })
	if b.cfg.portsDocker() {
		phase("9", func() error { return b.portsDocker(ctx, sides, name, label) })
	}
	return errors.Join(errs...)
}

// hostArgs are the host instance's serve flags beyond its name and state.
func (b *bench) hostArgs(name string) []string {
	args := []string{"--default-address-pool", "base=10.231.0.0/16,size=24"}
	if b.cfg.portsDocker() {
		// Phase 9 counts the 503 answers; the other phases run without
		// the metrics middleware, as before.
		sock := filepath.Join(b.workDir, name+"-metrics.sock")
		args = append(args, "--metrics-socket", sock)
		b.hostMetrics = newMetricsClient(sock)
	}
	return args
}

// lifecycle is phase 1: docker run --rm IMAGE true, alternating networks,
// after two untimed rounds.
func (b *bench) lifecycle(ctx context.Context, sides []side, label string) error {
	res := &pairResult{Op: "docker run --rm IMAGE true", Unit: "s"}
	logf("phase 1: %d x docker run --rm true per network (plus 2 warm-up rounds)", b.cfg.trials)
	from := logSize(b.hostLog)
	for i := -2; i < b.cfg.trials; i++ {
		for _, s := range sides {
			d, _, err := timed(ctx, "docker", "run", "--rm", "--label", label, "--net", s.network, b.cfg.image, "true")
			if err != nil {
				return err
			}
			if i >= 0 {
				res.add(s.mynet, d.Seconds())
			}
		}
	}
	res.Plugin = readPluginTime(b.hostLog, from, b.cfg.trials+2)
	b.rep.Lifecycle = res.finish()
	logf("phase 1: median mynet %.3f s, bridge %.3f s, ratio %.3f; mynet's own time %.1f ms per container", float64(res.MynetMedian), float64(res.BridgeMedian), float64(res.Ratio), float64(res.Plugin.PerUnitMs))
	return nil
}

// parallelStart is phase 2: N containers started at once with docker run
// -d, then removed at once with docker rm -f.
func (b *bench) parallelStart(ctx context.Context, sides []side, label string) error {
	res := newSplit(fmt.Sprintf("%d x docker run -d in parallel", b.cfg.parallel), fmt.Sprintf("%d x docker rm -f in parallel", b.cfg.parallel), "start + remove")
	logf("phase 2: %d containers at once, %d trial(s) per network", b.cfg.parallel, b.cfg.parallelTrials)
	all := func(fn func(i int) error) (time.Duration, error) {
		start := time.Now()
		var wg sync.WaitGroup
		errc := make(chan error, b.cfg.parallel)
		for i := range b.cfg.parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(i); err != nil {
					errc <- err
				}
			}()
		}
		wg.Wait()
		close(errc)
		return time.Since(start), <-errc
	}
	from := logSize(b.hostLog)
	for t := range b.cfg.parallelTrials {
		for _, s := range sides {
			prefix := fmt.Sprintf("mnbench-%s-p%d%s-", b.runID, t, s.label[:1])
			up, err := all(func(i int) error {
				_, err := docker(ctx, "run", "-d", "--name", prefix+strconv.Itoa(i), "--label", label, "--net", s.network, b.cfg.image, "sleep", "3600")
				return err
			})
			if err != nil {
				return err
			}
			down, err := all(func(i int) error {
				_, err := docker(ctx, "rm", "-f", prefix+strconv.Itoa(i))
				return err
			})
			if err != nil {
				return err
			}
			res.add(s.mynet, up, down)
			logf("phase 2: %s trial %d: start %.2f s, remove %.2f s", s.label, t+1, up.Seconds(), down.Seconds())
			settle(ctx)
		}
	}
	res.Total.Plugin = readPluginTime(b.hostLog, from, b.cfg.parallel*b.cfg.parallelTrials)
	b.rep.Parallel = res.finish()
	return nil
}

// settle gives the kernel time to finish tearing down namespaces before
// the next timed step, so one side does not pay for the other's cleanup.
func settle(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// netCreate is phase 3: docker network create + rm, alternating drivers.
func (b *bench) netCreate(ctx context.Context, plugin, label string) error {
	res := newSplit("docker network create", "docker network rm", "create + rm")
	logf("phase 3: %d x docker network create + rm per driver", b.cfg.netTrials)
	from := logSize(b.hostLog)
	for i := -1; i < b.cfg.netTrials; i++ {
		for _, mynet := range []bool{true, false} {
			name := fmt.Sprintf("mnbench-%s-n%d-%v", b.runID, i+1, map[bool]string{true: "m", false: "b"}[mynet])
			args := []string{"network", "create", "--label", label, "-d", "bridge", name}
			if mynet {
				args = []string{"network", "create", "--label", label, "-d", plugin, "--ipam-driver", plugin, name}
			}
			create, _, err := timed(ctx, "docker", args...)
			if err != nil {
				return err
			}
			rm, _, err := timed(ctx, "docker", "network", "rm", name)
			if err != nil {
				return err
			}
			if i >= 0 {
				res.add(mynet, create, rm)
			}
		}
	}
	res.Total.Plugin = readPluginTime(b.hostLog, from, b.cfg.netTrials+1)
	b.rep.NetCreate = res.finish()
	logf("phase 3: median mynet %.3f s, bridge %.3f s, ratio %.3f", float64(res.Total.MynetMedian), float64(res.Total.BridgeMedian), float64(res.Total.Ratio))
	return nil
}

// removeLabelled force-removes the containers or networks carrying label.
func removeLabelled(ctx context.Context, kind, label string) error {
	var list []string
	if kind == "container" {
		list = []string{"ps", "-aq", "--filter", "label=" + label}
	} else {
		list = []string{"network", "ls", "-q", "--filter", "label=" + label}
	}
	out, err := docker(ctx, list...)
	if err != nil {
		return err
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return nil
	}
	logf("cleanup: removing %d %s(s)", len(ids), kind)
	if kind == "container" {
		_, err = docker(ctx, append([]string{"rm", "-f"}, ids...)...)
		return err
	}
	// A `docker run --rm` container that just exited is removed by the
	// daemon after the client returns, so its endpoint can still hold the
	// network for a moment: retry.
	for try := 0; ; try++ {
		var out string
		out, err = docker(ctx, append([]string{"network", "rm"}, ids...)...)
		if err == nil || try == 10 || !strings.Contains(out, "active endpoints") {
			return err
		}
		if out, lerr := docker(ctx, list...); lerr == nil {
			if ids = strings.Fields(out); len(ids) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// checkHostInstanceEmpty asks the host instance for its state before it
// stops: every network and endpoint should be gone by now.
func (b *bench) checkHostInstanceEmpty(ctx context.Context, inst *instance) error {
	if !inst.running() {
		return fmt.Errorf("mynet %s exited during the run (%v); log tail:\n%s", inst.name, inst.waitErr, inst.logTail(20))
	}
	var st struct{ Networks, Endpoints, Pools []json.RawMessage }
	if err := inst.client.call(ctx, "Mynet.State", nil, &st); err != nil {
		return err
	}
	if n := len(st.Networks) + len(st.Endpoints) + len(st.Pools); n > 0 {
		return fmt.Errorf("mynet %s still has %d networks, %d endpoints, %d pools after cleanup", inst.name, len(st.Networks), len(st.Endpoints), len(st.Pools))
	}
	return nil
}

var chainsRE = regexp.MustCompile(`chains=(\S+)`)

// checkHostLeftovers looks for links tagged by the host instance and rules
// in its chains after it stopped.
func (b *bench) checkHostLeftovers(ctx context.Context, inst *instance) error {
	var left []string
	if out, err := runCmd(ctx, nil, "ip", "-d", "-o", "link"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "mynet:"+inst.name+":") {
				left = append(left, "link: "+strings.Join(strings.Fields(l)[:2], " "))
			}
		}
	}
	raw, _ := os.ReadFile(inst.logPath)
	if m := chainsRE.FindSubmatch(raw); m != nil {
		chains := strings.Split(strings.Trim(string(m[1]), `"`), ",")
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := runCmd(ctx, nil, tool)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(out, "\n") {
				for _, c := range chains {
					if c != "" && strings.Contains(l, c) {
						left = append(left, tool+": "+l)
						break
					}
				}
			}
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("left on the host after mynet %s stopped:\n  %s", inst.name, strings.Join(left, "\n  "))
	}
	return nil
}
