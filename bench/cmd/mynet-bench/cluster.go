package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Phase "cluster" (issue 14): cluster networks on the multi-host harness
// (scripts/cluster.sh: two Docker "hosts" and one etcd on this machine).
// It measures cross-host against same-host traffic on one cluster network,
// with a bare veth pair between two namespaces as the floor; `docker run`
// on a cluster network against a single-host mynet network; etcd writes
// per container start and stop (from etcd's revision); the time from
// `docker run` on A to the entries on B; the resync of 1,000 remote
// endpoints after a restart of B's mynet; and B's RSS with them. The data
// plane is pinned as phase 7 is (-dp-cpu).

const (
	clusterScript = "scripts/cluster.sh"
	clusterBase   = "/run/mynet-cluster"
	clusterPrefix = "mynet-cluster"
	clusterRoot   = "/mynet/v1" // model.DefaultClusterRoot
	// clusterSubnet is the cluster network's: room for the 1,000 fake
	// remote endpoints (10.80.8.0-10.80.11.255) besides the real ones.
	clusterSubnet = "10.80.0.0/20"
	singleSubnet  = "10.81.0.0/24"
	// fakeVTEP is the fake host's underlay address: on the underlay's
	// subnet, used by nobody.
	fakeVTEP = "198.19.77.99"
)

// clusterServeArgs: cluster mode, a metrics socket, the default dead grace
// (far longer than the phase, so the fake host's claims stay).
const clusterServeArgs = "--cluster-store etcd://{etcd} --vtep-addr {vtep} --host-id " + clusterPrefix + "-{host}"

// clusterHost is one host of the harness.
type clusterHost struct {
	letter, dockerHost, netns string
}

// dir is where the harness keeps the host's files.
func (h clusterHost) dir() string { return filepath.Join(clusterBase, h.letter) }

// clusterRun is one run of the phase.
type clusterRun struct {
	b        *bench
	repo     string
	a, b2    clusterHost // hosts a and b
	etcdEP   string
	label    string
	net      string // the cluster network (on both hosts)
	single   string // a single-host mynet network on A
	vxlan    string // its VXLAN device
	busybox  string
	netbench string
	pin      []string
}

// clusterResult is the phase's figures.
type clusterResult struct {
	Stream      *clusterPair  `json:"stream_gbps"`       // cross-host vs same-host
	RRMean      *clusterPair  `json:"rr_mean_us"`        // cross-host vs same-host
	RRP99       *clusterPair  `json:"rr_p99_us"`         // cross-host vs same-host
	VethStream  []float64     `json:"veth_stream_gbps"`  // bare veth floor
	VethRRMean  []float64     `json:"veth_rr_mean_us"`   // bare veth floor
	Run         *clusterPair  `json:"docker_run_ms"`     // cluster vs single-host network
	WritesStart num           `json:"etcd_writes_start"` // per container; NaN (null): not measured
	WritesStop  num           `json:"etcd_writes_stop"`  // per container
	Propagation *clusterDelay `json:"propagation_ms"`
	Resync      num           `json:"resync_1000_ms"`
	RSS         int64         `json:"rss_1000_remote_bytes"`
	Notes       []string      `json:"notes,omitempty"`
}

// clusterPair compares the cluster case (A) with its local reference (B).
type clusterPair struct {
	Op      string    `json:"op"`
	Unit    string    `json:"unit"`
	A       []float64 `json:"a"`
	B       []float64 `json:"b"`
	MedianA num       `json:"median_a"`
	MedianB num       `json:"median_b"`
	Ratio   num       `json:"ratio"` // A / B
}

func (p *clusterPair) finish() {
	p.MedianA, p.MedianB = num(median(p.A)), num(median(p.B))
	p.Ratio = num(ratio(median(p.A), median(p.B)))
}

// clusterDelay is the lag of B's entries behind `docker run` on A: from
// the start of the command, and from A's claim (the end of A's
// RequestAddress, from A's log: the claim is written before the answer).
type clusterDelay struct {
	FromStart []float64 `json:"from_run_start"`
	FromClaim []float64 `json:"from_claim"`
	P50       num       `json:"p50_from_start"`
	P99       num       `json:"p99_from_start"`
	P50Claim  num       `json:"p50_from_claim"`
	P99Claim  num       `json:"p99_from_claim"`
}

// clusterPhase runs the phase under the docker lock, on a harness of its
// own, and takes the harness down at the end.
func (b *bench) clusterPhase(ctx context.Context) error {
	mark := b.cleanup.len()
	defer b.cleanup.runTo(mark)
	if help, _ := runCmd(ctx, nil, b.mynetBin, "serve", "-h"); !strings.Contains(help, "-cluster-store") {
		b.rep.Notes = append(b.rep.Notes, "phase cluster: skipped, "+b.mynetBin+" has no cluster mode (--cluster-store)")
		logf("phase cluster: skipped: %s has no --cluster-store", b.mynetBin)
		return nil
	}
	release, err := lockFile(ctx, b.cfg.dockerLock)
	if err != nil {
		return err
	}
	b.cleanup.push("release "+b.cfg.dockerLock, func(context.Context) error { release(); return nil })
	r := &clusterRun{b: b, label: "mynet-bench=" + b.runID}
	if r.repo, err = repoRoot(); err != nil {
		return err
	}
	if b.cfg.dpCPU != "none" {
		r.pin = []string{"--cpuset-cpus", b.cfg.dpCPU}
	}
	b.cleanup.push("scripts/cluster.sh down", func(ctx context.Context) error {
		_, err := r.harness(ctx, "down")
		return err
	})
	if err := r.up(ctx); err != nil {
		return err
	}
	nan := num(math.NaN())
	res := &clusterResult{WritesStart: nan, WritesStop: nan, Resync: nan}
	b.rep.Cluster = res
	steps := []struct {
		what string
		fn   func(context.Context, *clusterResult) error
	}{
		{"networks", r.networks},
		{"data plane", r.dataPlane},
		{"veth floor", r.vethFloor},
		{"docker run", r.dockerRun},
		{"etcd writes", r.etcdWrites},
		{"propagation", r.propagation},
		{"resync", r.resync},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		start := time.Now()
		if err := s.fn(ctx, res); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		logf("phase cluster: %s done in %v", s.what, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// repoRoot finds the checkout (scripts/cluster.sh) from the working
// directory up, as make bench runs from the top.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, clusterScript)); err == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no %s in %s or above: run from the checkout", clusterScript, dir)
		}
	}
}

// harness runs scripts/cluster.sh; its progress goes to our stderr.
func (r *clusterRun) harness(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.repo, clusterScript), args...)
	cmd.Env = append(os.Environ(), "MYNET_BIN="+r.b.mynetBin, "MYNET_CLUSTER_SERVE_ARGS="+clusterServeArgs+
		" --metrics-socket "+clusterBase+"/{host}/metrics.sock")
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w", clusterScript, strings.Join(args, " "), err)
	}
	return string(out), nil
}

var (
	clusterHostLine = regexp.MustCompile(`^host ([a-z]): DOCKER_HOST=(unix:///\S+) netns=(\S+)$`)
	clusterEtcdLine = regexp.MustCompile(`^etcd: (\S+) pid=([0-9]+)$`)
)

// up brings two hosts up (a cluster left by an earlier run is taken down
// first) and imports the images into both.
func (r *clusterRun) up(ctx context.Context) error {
	if _, err := os.Stat(clusterBase); err == nil {
		logf("phase cluster: a cluster is up already: taking it down first")
		if _, err := r.harness(ctx, "down"); err != nil {
			return err
		}
	}
	out, err := r.harness(ctx, "up", "2")
	if err != nil {
		return err
	}
	var hosts []clusterHost
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if m := clusterHostLine.FindStringSubmatch(sc.Text()); m != nil {
			hosts = append(hosts, clusterHost{m[1], m[2], m[3]})
		} else if m := clusterEtcdLine.FindStringSubmatch(sc.Text()); m != nil {
			r.etcdEP = m[1]
		}
	}
	if len(hosts) != 2 || r.etcdEP == "" {
		return fmt.Errorf("scripts/cluster.sh up 2 printed:\n%s", out)
	}
	r.a, r.b2 = hosts[0], hosts[1]
	bb, err := r.b.busyboxTar(ctx)
	if err != nil {
		return err
	}
	img, nb, err := r.b.netbenchTar(ctx)
	if err != nil {
		return err
	}
	r.busybox, r.netbench = "mynet-bench-busybox:1", img
	for _, h := range hosts {
		for _, im := range []struct {
			name, change string
			tar          []byte
		}{{r.busybox, "ENV PATH=/bin", bb.Bytes()}, {r.netbench, netbenchChange, nb.Bytes()}} {
			if _, err := hostCmd(ctx, h, bytes.NewReader(im.tar), "import", "--change", im.change, "-", im.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// hostCmd runs the docker CLI against h's engine.
func hostCmd(ctx context.Context, h clusterHost, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+h.dockerHost)
	cmd.Stdin = stdin
	cmd.WaitDelay = 5 * time.Second
	raw, err := cmd.CombinedOutput()
	out := strings.TrimSpace(string(raw))
	if err != nil {
		return out, fmt.Errorf("host %s: `docker %s`: %v: %s", h.letter, strings.Join(args, " "), err, lastLines(out, 5))
	}
	return out, nil
}

func (r *clusterRun) docker(ctx context.Context, h clusterHost, args ...string) (string, error) {
	return hostCmd(ctx, h, nil, args...)
}

// inNS runs a command in h's network namespace.
func inNS(ctx context.Context, ns string, name string, args ...string) (string, error) {
	return runCmd(ctx, nil, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// networks creates the cluster network on both hosts and a single-host
// network on A, and finds the VXLAN device.
func (r *clusterRun) networks(ctx context.Context, _ *clusterResult) error {
	r.net, r.single = "mnbench-"+r.b.runID+"-cluster", "mnbench-"+r.b.runID+"-single"
	for _, h := range []clusterHost{r.a, r.b2} {
		if _, err := r.docker(ctx, h, "network", "create", "--label", r.label, "-d", "mynet", "--ipam-driver", "mynet",
			"--subnet", clusterSubnet, "-o", "mynet.cluster="+r.net, r.net); err != nil {
			return err
		}
		r.b.cleanup.push("remove the cluster network on host "+h.letter, func(ctx context.Context) error {
			return r.removeNetwork(ctx, h, r.net)
		})
	}
	if _, err := r.docker(ctx, r.a, "network", "create", "--label", r.label, "-d", "mynet", "--ipam-driver", "mynet",
		"--subnet", singleSubnet, r.single); err != nil {
		return err
	}
	r.b.cleanup.push("remove the single-host network", func(ctx context.Context) error {
		return r.removeNetwork(ctx, r.a, r.single)
	})
	vni, err := r.etcdctl(ctx, "get", "--print-value-only", clusterRoot+"/networks/"+r.net)
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`"vni":\s*([0-9]+)`).FindStringSubmatch(vni)
	if m == nil {
		return fmt.Errorf("no VNI in the record of %s: %s", r.net, vni)
	}
	r.vxlan = "mnx" + m[1]
	return nil
}

// removeNetwork removes a network and its containers on h.
func (r *clusterRun) removeNetwork(ctx context.Context, h clusterHost, name string) error {
	ids, err := r.docker(ctx, h, "ps", "-aq", "--filter", "network="+name)
	if err == nil && ids != "" {
		_, err = r.docker(ctx, h, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	_, rmErr := r.docker(ctx, h, "network", "rm", name)
	return errors.Join(err, rmErr)
}

// etcdctl runs the harness's etcdctl in host a's namespace.
func (r *clusterRun) etcdctl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"netns", "exec", r.a.netns, "env", "ETCDCTL_API=3", clusterBase + "/etcd/etcdctl",
		"--endpoints=" + r.etcdEP, "--dial-timeout=2s", "--command-timeout=10s"}, args...)
	return runCmd(ctx, nil, "ip", full...)
}
