package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// maxEndpoints is mynet's limit per network (driver.Config.MaxEndpoints).
const maxEndpoints = 1000

// callNames is the endpoint cycle in the engine's order for a container
// start and stop.
var callNames = []string{"RequestAddress", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint", "ReleaseAddress"}

// callStats summarises latencies in milliseconds.
type callStats struct {
	N    int `json:"n"`
	P50  num `json:"p50_ms"`
	P99  num `json:"p99_ms"`
	Mean num `json:"mean_ms"`
	Max  num `json:"max_ms"`
}

func statsOf(ms []float64) callStats {
	if len(ms) == 0 {
		return callStats{}
	}
	return callStats{N: len(ms), P50: num(percentile(ms, 50)), P99: num(percentile(ms, 99)), Mean: num(mean(ms)), Max: num(percentile(ms, 100))}
}

// recorder collects per-call latencies from many goroutines.
type recorder struct {
	mu  sync.Mutex
	lat map[string][]float64
}

func newRecorder() *recorder { return &recorder{lat: map[string][]float64{}} }

func (r *recorder) add(call string, d time.Duration) {
	r.mu.Lock()
	r.lat[call] = append(r.lat[call], millis(d))
	r.mu.Unlock()
}

func (r *recorder) stats() map[string]callStats {
	out := map[string]callStats{}
	for k, v := range r.lat {
		out[k] = statsOf(v)
	}
	return out
}

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

// probeLock runs one endpoint cycle (so that mynet has a change to
// reconcile), then calls Join on e every 20 ms for dur.
func probeLock(ctx context.Context, c *pluginClient, n benchNet, e endpoint, alive int, dur time.Duration) (lockProbe, error) {
	if _, err := n.cycle(ctx, c, nil); err != nil {
		return lockProbe{}, err
	}
	req := map[string]any{"NetworkID": n.id, "EndpointID": strings.Repeat("f", 64)}
	var ms []float64
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		start := time.Now()
		if err := c.call(ctx, "NetworkDriver.DeleteEndpoint", req, nil); err != nil {
			return lockProbe{}, err
		}
		ms = append(ms, millis(time.Since(start)))
		select {
		case <-ctx.Done():
			return lockProbe{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return lockProbe{N: alive, Seconds: dur.Seconds(), Call: statsOf(ms)}, nil
}

// benchNet is a network created through the socket the way the engine does
// for `docker network create -d mynet --ipam-driver mynet --subnet POOL`.
type benchNet struct {
	id, poolID, pool, gateway string
}

func createNetwork(ctx context.Context, c *pluginClient, pool string) (benchNet, error) {
	n := benchNet{id: randHex(32)}
	var pr struct{ PoolID, Pool string }
	if err := c.call(ctx, "IpamDriver.RequestPool", map[string]any{"AddressSpace": "local", "Pool": pool, "Options": map[string]string{}}, &pr); err != nil {
		return n, err
	}
	n.poolID, n.pool = pr.PoolID, pr.Pool
	var ar struct{ Address string }
	if err := c.call(ctx, "IpamDriver.RequestAddress", map[string]any{"PoolID": n.poolID, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}}, &ar); err != nil {
		return n, err
	}
	n.gateway = ar.Address
	req := map[string]any{
		"NetworkID": n.id,
		"Options":   map[string]any{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": map[string]any{}},
		"IPv4Data":  []map[string]any{{"AddressSpace": "local", "Pool": n.pool, "Gateway": n.gateway, "AuxAddresses": map[string]string{}}},
		"IPv6Data":  []map[string]any{},
	}
	return n, c.call(ctx, "NetworkDriver.CreateNetwork", req, nil)
}

type endpoint struct{ id, addr, mac string }

// randomMAC returns a locally administered unicast MAC, as the engine
// generates for an endpoint.
func randomMAC() string {
	b := []byte(randHex(6))
	mac := make([]byte, 0, 17)
	for i := 0; i < 12; i += 2 {
		if i > 0 {
			mac = append(mac, ':')
		}
		mac = append(mac, b[i], b[i+1])
	}
	mac[1] = "26ae"[int(mac[1])%4] // x2, x6, xa, xe: locally administered unicast
	return string(mac)
}

// timedCall runs one call and records its latency under its short name.
func timedCall(ctx context.Context, c *pluginClient, rec *recorder, api, call string, req, resp any) error {
	start := time.Now()
	err := c.call(ctx, api+"."+call, req, resp)
	if rec != nil && err == nil {
		rec.add(call, time.Since(start))
	}
	return err
}

// up is the first half of the cycle: an address, the endpoint, the join.
func (n benchNet) up(ctx context.Context, c *pluginClient, rec *recorder) (endpoint, error) {
	// The engine generates the MAC first and sends it with RequestAddress,
	// since mynet's IPAM asks for it (RequiresMACAddress).
	e := endpoint{id: randHex(32), mac: randomMAC()}
	var ar struct{ Address string }
	if err := timedCall(ctx, c, rec, "IpamDriver", "RequestAddress", map[string]any{"PoolID": n.poolID, "Options": map[string]string{"com.docker.network.endpoint.macaddress": e.mac}}, &ar); err != nil {
		return e, err
	}
	e.addr = ar.Address
	err := timedCall(ctx, c, rec, "NetworkDriver", "CreateEndpoint", map[string]any{
		"NetworkID": n.id, "EndpointID": e.id,
		"Interface": map[string]string{"Address": e.addr, "AddressIPv6": "", "MacAddress": e.mac},
		"Options":   map[string]any{},
	}, nil)
	if err == nil {
		err = timedCall(ctx, c, rec, "NetworkDriver", "Join", map[string]any{
			"NetworkID": n.id, "EndpointID": e.id, "SandboxKey": "/var/run/docker/netns/" + e.id[:12], "Options": map[string]any{},
		}, nil)
	}
	if err != nil {
		return e, errors.Join(err, n.down(ctx, c, nil, e))
	}
	return e, nil
}

// down is the second half: leave, delete the endpoint, release the address.
func (n benchNet) down(ctx context.Context, c *pluginClient, rec *recorder, e endpoint) error {
	ids := map[string]any{"NetworkID": n.id, "EndpointID": e.id}
	err := timedCall(ctx, c, rec, "NetworkDriver", "Leave", ids, nil)
	err = errors.Join(err, timedCall(ctx, c, rec, "NetworkDriver", "DeleteEndpoint", ids, nil))
	if e.addr != "" {
		addr, _, _ := strings.Cut(e.addr, "/") // the engine releases the bare address
		err = errors.Join(err, timedCall(ctx, c, rec, "IpamDriver", "ReleaseAddress", map[string]any{"PoolID": n.poolID, "Address": addr}, nil))
	}
	return err
}

// cycle runs one full endpoint cycle and returns its duration.
func (n benchNet) cycle(ctx context.Context, c *pluginClient, rec *recorder) (time.Duration, error) {
	start := time.Now()
	e, err := n.up(ctx, c, rec)
	if err != nil {
		return 0, err
	}
	if err := n.down(ctx, c, rec, e); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// runCycles runs total cycles (rounded up to a multiple of conc) on conc
// goroutines.
func runCycles(ctx context.Context, c *pluginClient, n benchNet, conc, total int) (apiResult, error) {
	per := (total + conc - 1) / conc
	rec := newRecorder()
	var cycleMs []float64
	var mu sync.Mutex
	var wg sync.WaitGroup
	errc := make(chan error, conc)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				if ctx.Err() != nil {
					errc <- ctx.Err()
					return
				}
				d, err := n.cycle(ctx, c, rec)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				cycleMs = append(cycleMs, millis(d))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return apiResult{}, err
	}
	r := apiResult{Concurrency: conc, Cycles: len(cycleMs), Seconds: num(wall.Seconds()), CyclesPerSec: num(float64(len(cycleMs)) / wall.Seconds()),
		Calls: rec.stats(), Cycle: statsOf(cycleMs)}
	for _, name := range callNames {
		if s := r.Calls[name]; r.WorstCall == "" || s.P99 > r.WorstP99 {
			r.WorstP99, r.WorstCall = s.P99, name
		}
	}
	return r, nil
}

// netnsPhases runs phases 4, 5, 6 and 8 against a mynet instance in a
// scratch network namespace: its links and rules live and die there, and
// only its socket (and state under the work directory) is on the host.
func (b *bench) netnsPhases(ctx context.Context) error {
	mark := b.cleanup.len()
	defer b.cleanup.runTo(mark)
	ns := "mynet-bench-" + b.runID
	if _, err := runCmd(ctx, nil, "ip", "netns", "add", ns); err != nil {
		return err
	}
	b.cleanup.push("delete netns "+ns, func(ctx context.Context) error {
		_, err := runCmd(ctx, nil, "ip", "netns", "del", ns)
		return err
	})
	if _, err := runCmd(ctx, nil, "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	logf("phases 4-6,8: mynet in network namespace %s", ns)
	var extra []string
	var prof *profiler
	if b.cfg.pprofDir != "" {
		if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
			return err
		}
		sock := filepath.Join(b.workDir, "ns-metrics.sock")
		extra = []string{"--pprof", "--metrics-socket", sock}
		prof = newProfiler(b.cfg.pprofDir, sock)
	}
	inst, err := startInstance(ctx, b.mynetBin, "mynet-bench-ns-"+b.runID, ns, b.workDir, extra...)
	if err != nil {
		return err
	}
	b.cleanup.push("stop mynet "+inst.name, inst.stop)
	c := inst.client
	mem := &memoryResult{}
	readRSS := func(into *int64) {
		time.Sleep(500 * time.Millisecond) // let the runtime settle after a burst
		if cur, peak, err := rss(inst.pid()); err == nil {
			*into, mem.PeakRSS = cur, peak
		} else {
			logf("rss: %v", err)
		}
	}
	readRSS(&mem.StartRSS)

	n, err := createNetwork(ctx, c, "10.200.0.0/16")
	if err != nil {
		return fmt.Errorf("create the scratch network: %w", err)
	}
	readRSS(&mem.IdleRSS)
	b.rep.Memory = mem
	countRules := func(eps, ports int) error {
		rc := ruleCount{Endpoints: eps, Ports: ports}
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := runCmd(ctx, nil, "ip", "netns", "exec", ns, tool)
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
		if out, err := runCmd(ctx, nil, "ip", "netns", "exec", ns, "nft", "list", "ruleset"); err == nil {
			rc.NftChains, rc.NftRules = countNftBridge(out)
		}
		logf("phase 6: %d endpoints, %d published ports: %d iptables rules (%d IPv4, %d IPv6); nftables bridge filter: %d chains, %d rules",
			eps, ports, rc.Total, rc.IPv4, rc.IPv6, rc.NftChains, rc.NftRules)
		b.rep.Rules = append(b.rep.Rules, rc)
		return nil
	}
	if b.cfg.phases["6"] {
		if err := countRules(0, 0); err != nil {
			return err
		}
	}

	if b.cfg.phases["4"] {
		for _, conc := range b.cfg.apiConc {
			logf("phase 4: %d endpoint cycles at concurrency %d", b.cfg.apiCycles, conc)
			profDone := func() {}
			if prof != nil {
				profDone = prof.during(ctx, fmt.Sprintf("phase4-c%d", conc))
			}
			r, err := runCycles(ctx, c, n, conc, b.cfg.apiCycles)
			profDone()
			if err != nil {
				return fmt.Errorf("phase 4 at concurrency %d: %w", conc, err)
			}
			logf("phase 4: concurrency %d: %.1f cycles/s, cycle p50 %.2f ms, worst call p99 %.2f ms (%s)", conc, float64(r.CyclesPerSec), float64(r.Cycle.P50), float64(r.WorstP99), r.WorstCall)
			b.rep.API = append(b.rep.API, r)
		}
		readRSS(&mem.AfterAPIRSS)
	}

	if !b.cfg.phases["5"] && !b.cfg.phases["6"] && !b.cfg.phases["8"] {
		return nil
	}
	// Phases 5, 6 and 8 share one growing set of live endpoints.
	var alive []endpoint
	var fillTime time.Duration
	fillTo := func(target int) error {
		need := target - len(alive)
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
					e, err := n.up(ctx, c, nil)
					if err != nil {
						errc <- err
						return
					}
					mu.Lock()
					alive = append(alive, e)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		fillTime += time.Since(start)
		close(errc)
		if err := <-errc; err != nil {
			return fmt.Errorf("creating endpoint %d: %w", len(alive)+1, err)
		}
		return nil
	}
	ruleAt := map[int]bool{}
	maxN := b.cfg.scalePoints[len(b.cfg.scalePoints)-1]
	if b.cfg.phases["6"] {
		for _, r := range []int{100, maxEndpoints} {
			if r <= maxN {
				ruleAt[r] = true
			}
		}
	}
	scaleAt := map[int]bool{}
	if b.cfg.phases["5"] {
		for _, p := range b.cfg.scalePoints {
			scaleAt[p] = true
		}
	}
	var steps []int
	for k := range scaleAt {
		steps = append(steps, k)
	}
	for k := range ruleAt {
		if !scaleAt[k] {
			steps = append(steps, k)
		}
	}
	if b.cfg.phases["8"] && !slices.Contains(steps, maxN) {
		steps = append(steps, maxN)
	}
	slices.Sort(steps)
	scaling := &scalingResult{}
	for _, target := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if scaleAt[target] {
			if err := fillTo(target - 1); err != nil {
				return err
			}
			rec := newRecorder()
			p := scalePoint{N: target}
			for range b.cfg.scaleCycles {
				d, err := n.cycle(ctx, c, rec)
				if err != nil {
					return fmt.Errorf("phase 5: cycle at N=%d: %w", target, err)
				}
				p.CycleMs = append(p.CycleMs, millis(d))
			}
			p.CycleMedian = num(median(p.CycleMs))
			p.Calls = rec.stats()
			logf("phase 5: endpoint %d (%d alive): cycle median %.2f ms", target, target-1, float64(p.CycleMedian))
			scaling.Points = append(scaling.Points, p)
			b.rep.Scaling = scaling
			if b.cfg.lockProbe > 0 && b.cfg.phases["5"] && (target == b.cfg.scalePoints[0] || target == maxN) && len(alive) > 0 {
				logf("phase 5: probing the endpoint lock for %v with %d endpoints", b.cfg.lockProbe, len(alive))
				lp, err := probeLock(ctx, c, n, alive[0], len(alive), b.cfg.lockProbe)
				if err != nil {
					return fmt.Errorf("phase 5: lock probe: %w", err)
				}
				logf("phase 5: probe p50 %.2f ms, p99 %.2f ms, max %.2f ms with %d endpoints", float64(lp.Call.P50), float64(lp.Call.P99), float64(lp.Call.Max), lp.N)
				scaling.Probes = append(scaling.Probes, lp)
				b.rep.Scaling = scaling
			}
		}
		if err := fillTo(target); err != nil {
			return err
		}
		if ruleAt[target] {
			if err := countRules(len(alive), 0); err != nil {
				return err
			}
			if ports := min(b.cfg.ports, len(alive)); ports > 0 {
				if err := publish(ctx, c, n, alive[:ports]); err != nil {
					return fmt.Errorf("phase 6: publishing ports: %w", err)
				}
				if err := countRules(len(alive), ports); err != nil {
					return err
				}
				if err := revoke(ctx, c, n, alive[:ports]); err != nil {
					return fmt.Errorf("phase 6: unpublishing ports: %w", err)
				}
			}
		}
		if target == maxN && b.cfg.phases["8"] {
			mem.Endpoints = len(alive)
			readRSS(&mem.EndpointsRSS)
			logf("phase 8: RSS %.1f MiB with %d endpoints (idle %.1f MiB)", float64(mem.EndpointsRSS)/(1<<20), len(alive), float64(mem.IdleRSS)/(1<<20))
		}
	}
	if len(scaling.Points) > 0 {
		first, last := scaling.Points[0], scaling.Points[len(scaling.Points)-1]
		scaling.FirstN, scaling.LastN = first.N, last.N
		scaling.Ratio = num(ratio(float64(last.CycleMedian), float64(first.CycleMedian)))
	}
	if fillTime > 0 {
		scaling.FillPerSec = num(float64(len(alive)) / fillTime.Seconds())
	}
	// The endpoints are not deleted one by one: stopping mynet and deleting
	// the namespace (the deferred cleanup) removes their veths and rules,
	// and the state directory goes with the work directory.
	logf("phases 4-6,8 done; %d endpoints go with the namespace", len(alive))
	return nil
}

// publish publishes container port 80 of each endpoint on host port
// 20000+i, as the engine does for `-p 20000+i:80` on the gateway endpoint.
func publish(ctx context.Context, c *pluginClient, n benchNet, eps []endpoint) error {
	for i, e := range eps {
		hp := 20000 + i
		req := map[string]any{
			"NetworkID": n.id, "EndpointID": e.id,
			"Options": map[string]any{
				"com.docker.network.portmap":               []map[string]any{{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": hp, "HostPortEnd": hp}},
				"com.docker.network.endpoint.exposedports": []map[string]any{{"Proto": 6, "Port": 80}},
			},
		}
		if err := c.call(ctx, "NetworkDriver.ProgramExternalConnectivity", req, nil); err != nil {
			return err
		}
	}
	return nil
}

func revoke(ctx context.Context, c *pluginClient, n benchNet, eps []endpoint) error {
	for _, e := range eps {
		if err := c.call(ctx, "NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": n.id, "EndpointID": e.id}, nil); err != nil {
			return err
		}
	}
	return nil
}
