package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
)

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

// probeLock runs one endpoint cycle (so that mynet has a change to
// reconcile), then probes the endpoint lock for dur (see probeCalls).
func probeLock(ctx context.Context, c *pluginClient, n benchNet, e endpoint, alive int, dur time.Duration) (lockProbe, error) {
	if _, err := n.cycle(ctx, c, nil); err != nil {
		return lockProbe{}, err
	}
	st, failed, err := probeCalls(ctx, c, n, dur)
	if err == nil && failed != nil {
		err = failed
	}
	if err != nil {
		return lockProbe{}, err
	}
	return lockProbe{N: alive, Seconds: dur.Seconds(), Call: st}, nil
}

// probeCalls makes a DeleteEndpoint of an endpoint mynet does not know on
// n every 20 ms for dur: it does nothing but take the lock container
// starts and stops share, so its latency shows what holds them up. A call
// answered with an error (503 at the request's bound, when something held
// the lock that long) counts with the time it took, and the first such
// error is returned in failed; err is for the context ending.
func probeCalls(ctx context.Context, c *pluginClient, n benchNet, dur time.Duration) (st callStats, failed, err error) {
	req := map[string]any{"NetworkID": n.id, "EndpointID": strings.Repeat("f", 64)}
	var ms []float64
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		start := time.Now()
		if err := c.call(ctx, "NetworkDriver.DeleteEndpoint", req, nil); err != nil {
			if ctx.Err() != nil {
				return callStats{}, nil, ctx.Err()
			}
			if failed == nil {
				failed = err
			}
		}
		ms = append(ms, millis(time.Since(start)))
		select {
		case <-ctx.Done():
			return callStats{}, nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return statsOf(ms), failed, nil
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
