package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

// fakeClaims is how many remote endpoints of a fake host the resync step
// writes, from fakeFirst on.
const fakeClaims = 1000

var fakeFirst = netip.MustParseAddr("10.80.8.1")

// revision is etcd's current revision: it grows by one per write
// transaction, whatever it touches, and leases' keep-alives do not move
// it, so its growth over a step counts the writes of that step.
func (r *clusterRun) revision(ctx context.Context) (int64, error) {
	out, err := r.etcdctl(ctx, "endpoint", "status", "-w", "json")
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`"revision":\s*"?([0-9]+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no revision in etcdctl endpoint status: %s", out)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// etcdWrites: the writes of N container starts (docker run -d) and N
// stops (docker rm -f) on A, one after another, per container.
func (r *clusterRun) etcdWrites(ctx context.Context, res *clusterResult) error {
	n := r.b.cfg.trials
	rev0, err := r.revision(ctx)
	if err != nil {
		return err
	}
	var names []string
	for i := range n {
		name := fmt.Sprintf("mnbench-%s-w%d", r.b.runID, i)
		if _, err := r.docker(ctx, r.a, "run", "-d", "--name", name, "--label", r.label, "--net", r.net, r.busybox, "sleep", "600"); err != nil {
			return err
		}
		names = append(names, name)
	}
	rev1, err := r.revision(ctx)
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := r.docker(ctx, r.a, "rm", "-f", name); err != nil {
			return err
		}
	}
	rev2, err := r.revision(ctx)
	if err != nil {
		return err
	}
	res.WritesStart, res.WritesStop = num(float64(rev1-rev0)/float64(n)), num(float64(rev2-rev1)/float64(n))
	return nil
}

// propagation: for each trial, `docker run -d` on A while B's neighbour
// table on the VXLAN device is read every few milliseconds, until the new
// container's entry is there.
func (r *clusterRun) propagation(ctx context.Context, res *clusterResult) error {
	d := &clusterDelay{}
	res.Propagation = d
	for i := range r.b.cfg.trials {
		before, err := r.neighbours(ctx, r.b2)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("mnbench-%s-p%d", r.b.runID, i)
		ran := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := r.docker(ctx, r.a, "run", "-d", "--name", name, "--label", r.label, "--net", r.net, r.busybox, "sleep", "600")
			ran <- err
		}()
		seen, err := r.waitNewNeighbour(ctx, before, 10*time.Second)
		if runErr := <-ran; runErr != nil {
			return runErr
		}
		if err != nil {
			return err
		}
		claimed, err := r.lastClaim()
		if err != nil {
			return err
		}
		d.FromStart = append(d.FromStart, millis(seen.Sub(start)))
		d.FromClaim = append(d.FromClaim, millis(seen.Sub(claimed)))
		if _, err := r.docker(ctx, r.a, "rm", "-f", name); err != nil {
			return err
		}
	}
	d.P50, d.P99 = num(percentile(d.FromStart, 50)), num(percentile(d.FromStart, 99))
	d.P50Claim, d.P99Claim = num(percentile(d.FromClaim, 50)), num(percentile(d.FromClaim, 99))
	return nil
}

// lastClaim is when A's mynet last answered a RequestAddress on the
// cluster network's pool, from its log (timestamps in ms): the claim is
// written in etcd before that answer. The containers of the propagation
// step start one at a time, so the last is the one measured.
func (r *clusterRun) lastClaim() (time.Time, error) {
	raw, err := os.ReadFile(filepath.Join(r.a.dir(), "mynet.log"))
	if err != nil {
		return time.Time{}, err
	}
	want := "pool_id=" + clusterSubnet + " op=IpamDriver.RequestAddress "
	lines := strings.Split(string(raw), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, want) || !strings.HasPrefix(l, "time=") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		return time.Parse(time.RFC3339Nano, ts)
	}
	return time.Time{}, fmt.Errorf("no %q in host a's mynet log", want)
}

// waitNewNeighbour returns when B's neighbour table has an address not in
// before.
func (r *clusterRun) waitNewNeighbour(ctx context.Context, before map[string]bool, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		now, err := r.neighbours(ctx, r.b2)
		if err != nil {
			return time.Time{}, err
		}
		for ip := range now {
			if !before[ip] {
				return time.Now(), nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no new entry on host b's %s within %v of docker run on a", r.vxlan, within)
}

// neighbours is the set of addresses in h's neighbour table on the VXLAN
// device.
func (r *clusterRun) neighbours(ctx context.Context, h clusterHost) (map[string]bool, error) {
	out, err := runCmd(ctx, nil, "ip", "-n", h.netns, "neigh", "show", "dev", r.vxlan)
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			m[f[0]] = true
		}
	}
	return m, nil
}

// fakeEntries counts h's FDB entries towards the fake host.
func (r *clusterRun) fakeEntries(ctx context.Context, h clusterHost) (int, error) {
	out, err := inNS(ctx, h.netns, "bridge", "fdb", "show", "dev", r.vxlan)
	if err != nil {
		return 0, err
	}
	return strings.Count(out, "dst "+fakeVTEP+" "), nil
}

// resync: 1,000 claims of a fake host written into etcd; once B has
// programmed them, B's mynet is stopped, its VXLAN device deleted (with
// every entry), and B's mynet started again: the time from that start to
// 1,000 entries, and B's RSS then.
func (r *clusterRun) resync(ctx context.Context, res *clusterResult) error {
	r.b.cleanup.push("delete the fake host's claims", func(ctx context.Context) error { return r.fakeHost(ctx, "del") })
	if err := r.fakeHost(ctx, "put"); err != nil {
		return err
	}
	if err := r.waitFake(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("before the restart: %w", err)
	}
	if _, err := r.harness(ctx, "mynet", r.b2.letter, "stop"); err != nil {
		return err
	}
	if _, err := runCmd(ctx, nil, "ip", "-n", r.b2.netns, "link", "del", r.vxlan); err != nil {
		return err
	}
	start := time.Now()
	if _, err := r.harness(ctx, "mynet", r.b2.letter, "start"); err != nil {
		return err
	}
	if err := r.waitFake(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("after the restart: %w", err)
	}
	res.Resync = num(millis(time.Since(start)))
	raw, err := os.ReadFile(filepath.Join(r.b2.dir(), "mynet.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.Fields(string(raw))[0])
	if err != nil {
		return err
	}
	res.RSS, _, err = rss(pid)
	return err
}

// waitFake waits until B has an FDB entry for every fake endpoint.
func (r *clusterRun) waitFake(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	n := 0
	for time.Now().Before(deadline) {
		var err error
		if hasLink, _ := runCmd(ctx, nil, "ip", "-n", r.b2.netns, "-o", "link", "show", "dev", r.vxlan); hasLink != "" {
			if n, err = r.fakeEntries(ctx, r.b2); err != nil {
				return err
			}
			if n >= fakeClaims {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("host b has %d of %d FDB entries of the fake host after %v", n, fakeClaims, within)
}

// fakeHost writes ("put") or deletes ("del") the fake host's claims, with
// this binary run as the etcd helper in host a's namespace.
func (r *clusterRun) fakeHost(ctx context.Context, op string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	_, err = runCmd(ctx, nil, "ip", "netns", "exec", r.a.netns, self, etcdHelperArg, op, r.etcdEP, r.net)
	return err
}

// etcdHelperArg, as the first argument, makes mynet-bench the etcd helper:
// it must run in a namespace that reaches the harness's etcd.
const etcdHelperArg = "_cluster-fake-host"

// etcdHelper writes (put) or deletes (del) fakeClaims claims of a fake
// host in network NETWORK: args are OP ENDPOINT NETWORK.
func etcdHelper(args []string) error {
	if len(args) != 3 || (args[0] != "put" && args[0] != "del") {
		return errors.New("usage: " + etcdHelperArg + " put|del ENDPOINT NETWORK")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := model.ClusterKeys{Root: clusterRoot}
	var ops []clientv3.Op
	a := fakeFirst
	for i := range fakeClaims {
		if args[0] == "del" {
			ops = append(ops, clientv3.OpDelete(keys.Claim(args[2], a)))
		} else {
			b := a.As4()
			adv := model.EndpointAdvert{Host: "mnbench-fake-host", IP: a, VTEP: netip.MustParseAddr(fakeVTEP),
				MAC: fmt.Sprintf("02:42:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3]), Endpoint: fmt.Sprintf("fake%d", i)}
			v, _ := json.Marshal(adv)
			ops = append(ops, clientv3.OpPut(keys.Claim(args[2], a), string(v)))
		}
		a = a.Next()
	}
	for len(ops) > 0 {
		chunk := ops[:min(100, len(ops))] // below etcd's --max-txn-ops
		ops = ops[len(chunk):]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Txn(ctx).Then(chunk...).Commit()
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}
