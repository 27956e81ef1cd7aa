// Command mynet-bench measures mynet side by side with Docker's built-in
// bridge driver on the same dockerd (issue 6), prints a table with the
// targets and writes every sample to a JSON file. `make bench` runs it; see
// docs/benchmarks.md.
//
// Phases (select with -phases):
//
//	1  docker run --rm IMAGE true, mynet vs bridge network, trials alternated
//	2  N containers started in parallel, then removed; wall time
//	3  docker network create + rm
//	4  plugin API straight to the socket: endpoint cycle at concurrency 1 and 64
//	5  endpoint scaling: the Nth cycle with N-1 endpoints alive, N up to 1000
//	6  iptables rules vs endpoints and published ports
//	7  data plane: TCP throughput and request/response latency
//	8  mynet's RSS idle and with 1000 endpoints
//	9  ports and startup: docker run -p with 1000 ports, a start meanwhile,
//	   10,000 mappings on the socket, restart on a large state, the
//	   periodic pass (issue 13)
//	cluster  cluster networks on scripts/cluster.sh's hosts (issue 14):
//	   cross-host data plane, docker run, etcd writes, propagation, resync
//	   (cluster.go)
//	go Go benchmarks of the hot paths (go test -bench)
//
// Phases 1, 2, 3 and 7 use dockerd and a mynet instance of their own on the
// host, under the lock other users of the engine take (-docker-lock); 4, 5,
// 6 and 8 use a second instance in a scratch network namespace and never
// touch the host's links or rules. Everything created is labelled or named
// mynet-bench-<run>/mnbench-<run>-* and removed at the end, also after a
// failure or Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	mynetBin, netbenchBin, out, image, dockerLock, workDir string
	pprofDir, dpCPU                                        string
	phases                                                 map[string]bool
	trials, netTrials, parallel, parallelTrials            int
	apiCycles                                              int
	apiConc                                                []int
	scalePoints                                            []int
	scaleCycles, ports                                     int
	dpDuration, lockProbe                                  time.Duration
	dpTrials                                               int
	gobenchTime                                            string
	keep, rmImages                                         bool
	portsConfig
}

// listFlags are the flags parsed into c after the flag set is done.
type listFlags struct {
	phases, conc, points string
	quick                bool
	ports                portsLists
}

func parseFlags(args []string) (config, error) {
	var c config
	var l listFlags
	fs := flag.NewFlagSet("mynet-bench", flag.ContinueOnError)
	c.define(fs, &l)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if l.quick {
		c.quickDefaults(fs, &l)
	}
	err := c.parseLists(l)
	return c, err
}

// define declares every flag of the command on fs.
func (c *config) define(fs *flag.FlagSet, l *listFlags) {
	fs.StringVar(&c.mynetBin, "mynet", "bin/mynet", "mynet binary to benchmark")
	fs.StringVar(&c.netbenchBin, "netbench", "bin/netbench", "static netbench binary for phase 7 (built from ./bench/cmd/netbench with go when missing)")
	fs.StringVar(&c.out, "out", "bench/results.json", "JSON file for every sample and the summary")
	fs.StringVar(&c.image, "image", "mynet-e2e-busybox:1", "busybox image for phases 1-2: reused when present, else imported the way e2e does")
	fs.StringVar(&c.dockerLock, "docker-lock", "/tmp/mynet-docker.lock", "file locked (flock) while phases use dockerd; empty: no lock. Under `flock FILE mynet-bench` the inherited lock is used")
	fs.StringVar(&c.workDir, "work-dir", "", "directory for state and logs (default: a new temporary directory)")
	fs.StringVar(&l.phases, "phases", "1,2,3,4,5,6,7,8,9,cluster,go", "phases to run, comma-separated")
	fs.IntVar(&c.trials, "trials", 20, "phase 1: trials per driver")
	fs.IntVar(&c.netTrials, "net-trials", 20, "phase 3: trials per driver")
	fs.IntVar(&c.parallel, "parallel", 50, "phase 2: containers started at once")
	fs.IntVar(&c.parallelTrials, "parallel-trials", 3, "phase 2: trials per driver")
	fs.IntVar(&c.apiCycles, "api-cycles", 256, "phase 4: endpoint cycles per concurrency level")
	fs.StringVar(&l.conc, "api-concurrency", "1,64", "phase 4: concurrency levels")
	fs.StringVar(&l.points, "scale-points", "10,100,500,1000", "phase 5: endpoint counts N at which the Nth cycle is measured (at most 1000, mynet's limit per network)")
	fs.IntVar(&c.scaleCycles, "scale-cycles", 100, "phase 5: cycles measured at each point (a cycle takes about 5 ms; fewer make the median noisy)")
	fs.DurationVar(&c.lockProbe, "lock-probe", 11*time.Second, "phase 5: after a change, make an endpoint call every 20 ms for this long at the smallest and largest N, to see background work holding endpoint calls up (two reconcile intervals by default; 0: skip)")
	fs.IntVar(&c.ports, "ports", 20, "phase 6: published ports (one per endpoint)")
	fs.DurationVar(&c.dpDuration, "dp-duration", 5*time.Second, "phase 7: length of each throughput and latency test")
	fs.IntVar(&c.dpTrials, "dp-trials", 3, "phase 7: trials per driver and test")
	fs.StringVar(&c.dpCPU, "dp-cpu", strconv.Itoa(runtime.NumCPU()-1), "phase 7: the CPU (docker --cpuset-cpus) both netbench containers run on; \"none\" leaves placement to the scheduler")
	fs.StringVar(&c.gobenchTime, "gobench-time", "1s", "go phase: -benchtime")
	fs.StringVar(&c.pprofDir, "pprof", "", "phase 4: run the namespace instance with --pprof and save its CPU, goroutine, mutex and block profiles of each concurrency level in this directory")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory (plugin logs, state) after the run")
	fs.BoolVar(&c.rmImages, "rm-images", false, "remove the images this run imported (they are kept as a cache by default)")
	c.definePorts(fs, &l.ports)
	fs.BoolVar(&l.quick, "quick", false, "a smoke run of every phase in about two minutes: few trials, small scale; figures are not meaningful")
}

// quickDefaults is -quick: small counts for the flags not set on the
// command line.
func (c *config) quickDefaults(fs *flag.FlagSet, l *listFlags) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	def := func(name string, p *int, v int) {
		if !set[name] {
			*p = v
		}
	}
	def("trials", &c.trials, 4)
	def("net-trials", &c.netTrials, 4)
	def("parallel", &c.parallel, 10)
	def("parallel-trials", &c.parallelTrials, 1)
	def("api-cycles", &c.apiCycles, 64)
	def("scale-cycles", &c.scaleCycles, 5)
	def("dp-trials", &c.dpTrials, 1)
	if !set["scale-points"] {
		l.points = "10,100"
	}
	if !set["dp-duration"] {
		c.dpDuration = 2 * time.Second
	}
	if !set["lock-probe"] {
		c.lockProbe = 6 * time.Second
	}
	if !set["gobench-time"] {
		c.gobenchTime = "100ms"
	}
	c.quickPorts(set, &l.ports)
}

// parseLists parses the list flags into c and checks the counts.
func (c *config) parseLists(l listFlags) error {
	c.phases = map[string]bool{}
	for _, p := range strings.Split(l.phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains([]string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "cluster", "go"}, p) {
			return fmt.Errorf("-phases: unknown phase %q (use 1-9, cluster and go)", p)
		}
		c.phases[p] = true
	}
	if err := c.parsePorts(l.ports); err != nil {
		return err
	}
	var err error
	if c.apiConc, err = intList(l.conc); err != nil {
		return fmt.Errorf("-api-concurrency: %w", err)
	}
	if c.scalePoints, err = intList(l.points); err != nil {
		return fmt.Errorf("-scale-points: %w", err)
	}
	slices.Sort(c.scalePoints)
	if c.scalePoints[0] < 1 || c.scalePoints[len(c.scalePoints)-1] > maxEndpoints {
		return fmt.Errorf("-scale-points: use 1 to %d", maxEndpoints)
	}
	for _, n := range []int{c.trials, c.netTrials, c.parallel, c.parallelTrials, c.apiCycles, c.scaleCycles, c.dpTrials} {
		if n < 1 {
			return errors.New("trial counts, -parallel and cycle counts must be at least 1")
		}
	}
	return nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == etcdHelperArg {
		if err := etcdHelper(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "mynet-bench:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mynet-bench:", err)
		os.Exit(2)
	}
	os.Exit(run(cfg))
}

// logf prints progress on stderr, so that stdout holds just the table.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(cfg config) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "mynet-bench: must run as root (it creates network namespaces, networks and containers)")
		return 2
	}
	// The first signal cancels the run, which then cleans up; a second
	// one exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("%v: stopping and cleaning up (again to exit at once)", s)
		cancel()
		<-sigs
		os.Exit(130)
	}()

	b := &bench{cfg: cfg, runID: randHex(3), rep: &report{Started: time.Now().UTC()}}
	b.rep.RunID = b.runID
	b.rep.Config = cfg.summary()
	start := time.Now()
	err := b.setup()
	if err == nil {
		b.runPhases(ctx)
	} else {
		b.fail("setup", err)
	}
	b.cleanup.run()
	if !cfg.keep && b.workDir != "" && b.ownWorkDir {
		os.RemoveAll(b.workDir)
	} else if b.workDir != "" {
		logf("work directory kept: %s", b.workDir)
	}
	b.rep.Seconds = time.Since(start).Seconds()
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.rep.Notes = append(b.rep.Notes, "load average at the end: "+strings.TrimSpace(string(raw))+
			" (at the start: "+b.rep.Machine.LoadAvg+"); take final figures on a quiet machine")
	}
	b.rep.Targets = b.targets()
	b.printTable(os.Stdout)
	if err := b.writeJSON(); err != nil {
		fmt.Fprintln(os.Stderr, "mynet-bench:", err)
		return 1
	}
	if len(b.rep.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "mynet-bench: %d phase(s) failed; see errors in %s\n", len(b.rep.Errors), cfg.out)
		return 1
	}
	return 0
}

// bench is one run.
type bench struct {
	cfg        config
	runID      string
	rep        *report
	cleanup    cleanupStack
	workDir    string
	ownWorkDir bool
	mynetBin   string
	hostLog    string // log of the host instance, while phases 1-3 and 7 run
	// hostMetrics reads the host instance's metrics (phase 9 only).
	hostMetrics *metricsClient
}

func (b *bench) fail(phase string, err error) {
	logf("phase %s FAILED: %v", phase, err)
	b.rep.Errors = append(b.rep.Errors, fmt.Sprintf("phase %s: %v", phase, err))
}

func (b *bench) setup() error {
	var err error
	if b.mynetBin, err = filepath.Abs(b.cfg.mynetBin); err != nil {
		return err
	}
	if fi, err := os.Stat(b.mynetBin); err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("mynet binary %s: not an executable (run `make build` or pass -mynet)", b.mynetBin)
	}
	if b.cfg.workDir != "" {
		b.workDir = b.cfg.workDir
		if err := os.MkdirAll(b.workDir, 0o700); err != nil {
			return err
		}
	} else {
		if b.workDir, err = os.MkdirTemp("", "mynet-bench-"); err != nil {
			return err
		}
		b.ownWorkDir = true
	}
	b.rep.Machine = machineInfo(b.mynetBin)
	logf("run %s: work directory %s", b.runID, b.workDir)
	return nil
}

func (b *bench) runPhases(ctx context.Context) {
	want := func(ps ...string) bool {
		for _, p := range ps {
			if b.cfg.phases[p] {
				return true
			}
		}
		return false
	}
	// The scratch-namespace phases first: they need no lock and leave the
	// engine to others meanwhile.
	if want("4", "5", "6", "8") && ctx.Err() == nil {
		if err := b.netnsPhases(ctx); err != nil {
			b.fail("4-6,8", err)
		}
	}
	if b.cfg.portsSocket() && ctx.Err() == nil {
		if err := b.portsNetns(ctx); err != nil {
			b.fail("9 (socket)", err)
		}
	}
	if (want("1", "2", "3", "7") || b.cfg.portsDocker()) && ctx.Err() == nil {
		if err := b.dockerPhases(ctx); err != nil {
			b.fail("1-3,7,9", err)
		}
	}
	if want("cluster") && ctx.Err() == nil {
		if err := b.clusterPhase(ctx); err != nil {
			b.fail("cluster", err)
		}
	}
	if want("go") && ctx.Err() == nil {
		if err := b.goBenchmarks(ctx); err != nil {
			b.fail("go", err)
		}
	}
	if ctx.Err() != nil {
		b.rep.Errors = append(b.rep.Errors, "interrupted")
	}
}

// cleanupStack runs registered undo steps newest first, each once, with
// its own deadline, whatever happened before.
type cleanupStack struct{ steps []cleanupStep }

type cleanupStep struct {
	what string
	fn   func(context.Context) error
}

func (c *cleanupStack) push(what string, fn func(context.Context) error) {
	c.steps = append(c.steps, cleanupStep{what, fn})
}

// runTo runs the steps pushed after mark (see len), newest first.
func (c *cleanupStack) runTo(mark int) {
	for len(c.steps) > mark {
		s := c.steps[len(c.steps)-1]
		c.steps = c.steps[:len(c.steps)-1]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		if err := s.fn(ctx); err != nil {
			logf("cleanup: %s: %v", s.what, err)
		}
		cancel()
	}
}

func (c *cleanupStack) run()     { c.runTo(0) }
func (c *cleanupStack) len() int { return len(c.steps) }

// report is the JSON file.
type report struct {
	RunID     string           `json:"run_id"`
	Started   time.Time        `json:"started"`
	Seconds   float64          `json:"seconds"`
	LockWait  float64          `json:"docker_lock_wait_s"` // not part of the measures
	Machine   machine          `json:"machine"`
	Config    map[string]any   `json:"config"`
	Lifecycle *pairResult      `json:"lifecycle,omitempty"`  // 1
	Parallel  *splitResult     `json:"parallel,omitempty"`   // 2
	NetCreate *splitResult     `json:"net_create,omitempty"` // 3
	API       []apiResult      `json:"api,omitempty"`        // 4
	Scaling   *scalingResult   `json:"scaling,omitempty"`    // 5
	Rules     []ruleCount      `json:"rules,omitempty"`      // 6
	DataPlane *dataPlaneResult `json:"data_plane,omitempty"` // 7
	Memory    *memoryResult    `json:"memory,omitempty"`     // 8
	Ports     *portsResult     `json:"ports,omitempty"`      // 9
	Cluster   *clusterResult   `json:"cluster,omitempty"`
	GoBench   []goBenchResult  `json:"go_bench,omitempty"`
	Targets   []target         `json:"targets"`
	Notes     []string         `json:"notes,omitempty"`
	Errors    []string         `json:"errors,omitempty"`
}

func (c config) summary() map[string]any {
	phases := make([]string, 0, len(c.phases))
	for p := range c.phases {
		phases = append(phases, p)
	}
	slices.Sort(phases)
	return map[string]any{
		"phases": phases, "image": c.image, "trials": c.trials, "net_trials": c.netTrials,
		"parallel": c.parallel, "parallel_trials": c.parallelTrials, "api_cycles": c.apiCycles,
		"api_concurrency": c.apiConc, "scale_points": c.scalePoints, "scale_cycles": c.scaleCycles,
		"ports": c.ports, "lock_probe_s": c.lockProbe.Seconds(), "dp_duration_s": c.dpDuration.Seconds(), "dp_trials": c.dpTrials,
		"gobench_time": c.gobenchTime, "goarch": runtime.GOARCH,
		"pub_ports": c.pubPorts, "pub_base": fmt.Sprintf("%d:%d", c.pubHost, c.pubCtr), "pub_trials": c.pubTrials, "pub_runs": c.pubRuns,
		"map_counts": c.mapCounts, "map_cap_s": c.mapCap.Seconds(), "startup_networks": c.startNets, "startup_endpoints": c.startEps,
		"startup_ports": c.startPorts, "ports_firewalls": c.portsFirewalls, "pass_window_s": c.passWindow.Seconds(),
	}
}

// pairResult holds samples of one measure on a mynet and on a bridge
// network, in the order they ran (alternated), in Unit.
type pairResult struct {
	Op           string    `json:"op"`
	Unit         string    `json:"unit"`
	Mynet        []float64 `json:"mynet"`
	Bridge       []float64 `json:"bridge"`
	MynetMedian  num       `json:"mynet_median"`
	BridgeMedian num       `json:"bridge_median"`
	Ratio        num       `json:"ratio"` // mynet median / bridge median
	// Plugin is mynet's own share of the mynet side, from its log.
	Plugin *pluginTime `json:"plugin_time,omitempty"`
}

func (p *pairResult) add(mynet bool, v float64) {
	if mynet {
		p.Mynet = append(p.Mynet, v)
	} else {
		p.Bridge = append(p.Bridge, v)
	}
}

func (p *pairResult) finish() *pairResult {
	m, br := median(p.Mynet), median(p.Bridge)
	p.MynetMedian, p.BridgeMedian, p.Ratio = num(m), num(br), num(ratio(m, br))
	return p
}

func (b *bench) writeJSON() error {
	if err := os.MkdirAll(filepath.Dir(b.cfg.out), 0o755); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(b.rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(b.cfg.out, append(raw, '\n'), 0o644); err != nil {
		return err
	}
	logf("results written to %s", b.cfg.out)
	return nil
}

// num is a float that encodes NaN and Inf (a missing figure) as null,
// which encoding/json refuses to write for float64.
type num float64

func (n num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(f, 'g', -1, 64)), nil
}
