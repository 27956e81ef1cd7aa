package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// dataPlane: netbench server in a container on A; clients on A (same
// host) and on B (across hosts), alternated, all pinned to one CPU as in
// phase 7.
func (r *clusterRun) dataPlane(ctx context.Context, res *clusterResult) error {
	res.Stream = &clusterPair{Op: "TCP stream, cross-host / same-host", Unit: "Gbit/s"}
	res.RRMean = &clusterPair{Op: "TCP request/response 1 byte mean, cross-host / same-host", Unit: "us"}
	res.RRP99 = &clusterPair{Op: "TCP request/response 1 byte p99, cross-host / same-host", Unit: "us"}
	srv := "mnbench-" + r.b.runID + "-csrv"
	args := append(append([]string{"run", "-d", "--name", srv, "--label", r.label, "--net", r.net}, r.pin...),
		r.netbench, "server", "-port", "5201")
	if _, err := r.docker(ctx, r.a, args...); err != nil {
		return err
	}
	ip, err := r.docker(ctx, r.a, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, r.net), srv)
	if err != nil {
		return err
	}
	addr := ip + ":5201"
	n := 0
	for t := range r.b.cfg.dpTrials {
		for _, mode := range []string{"stream", "rr"} {
			for _, cross := range []bool{true, false} {
				h := r.a
				if cross {
					h = r.b2
				}
				n++
				m, err := r.client(ctx, h, fmt.Sprintf("mnbench-%s-ccli-%d", r.b.runID, n), addr, mode)
				if err != nil {
					return err
				}
				if mode == "stream" {
					addTo(res.Stream, cross, m["gbps"])
				} else {
					addTo(res.RRMean, cross, m["mean_us"])
					addTo(res.RRP99, cross, m["p99_us"])
				}
				logf("phase cluster: trial %d %s cross-host=%v %v", t+1, mode, cross, m)
			}
		}
	}
	res.Stream.finish()
	res.RRMean.finish()
	res.RRP99.finish()
	return nil
}

func addTo(p *clusterPair, a bool, v float64) {
	if a {
		p.A = append(p.A, v)
	} else {
		p.B = append(p.B, v)
	}
}

// client runs one netbench client on h and returns its figures.
func (r *clusterRun) client(ctx context.Context, h clusterHost, name, addr, mode string) (map[string]float64, error) {
	args := append(append([]string{"run", "--name", name, "--label", r.label, "--net", r.net}, r.pin...), r.netbench,
		"client", "-addr", addr, "-mode", mode, "-duration", r.b.cfg.dpDuration.String())
	out, err := r.docker(ctx, h, args...)
	if _, rmErr := r.docker(ctx, h, "rm", "-f", name); err == nil {
		err = rmErr
	}
	if err != nil {
		return nil, err
	}
	return netbenchFigures(out)
}

// netbenchFigures reads the numbers of netbench's last (JSON) line.
func netbenchFigures(out string) (map[string]float64, error) {
	last := out[strings.LastIndex(out, "\n")+1:]
	var raw map[string]any
	if err := json.Unmarshal([]byte(last), &raw); err != nil {
		return nil, fmt.Errorf("netbench output %q: %w", out, err)
	}
	m := map[string]float64{}
	for k, v := range raw {
		if f, ok := v.(float64); ok {
			m[k] = f
		}
	}
	return m, nil
}

// vethFloor: netbench between two namespaces joined by a bare veth pair,
// the least any container network can cost, pinned like the rest.
func (r *clusterRun) vethFloor(ctx context.Context, res *clusterResult) error {
	bin, err := r.b.netbenchBinary(ctx)
	if err != nil {
		return err
	}
	ns := [2]string{"mnbench-" + r.b.runID + "-v0", "mnbench-" + r.b.runID + "-v1"}
	for _, n := range ns {
		if _, err := runCmd(ctx, nil, "ip", "netns", "add", n); err != nil {
			return err
		}
		r.b.cleanup.push("remove namespace "+n, func(ctx context.Context) error {
			_, err := runCmd(ctx, nil, "ip", "netns", "del", n)
			return err
		})
	}
	// 198.18.201.0/30: benchmarking space, between these two namespaces only.
	steps := [][]string{
		{"-n", ns[0], "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", ns[1]},
		{"-n", ns[0], "addr", "add", "198.18.201.1/30", "dev", "v0"},
		{"-n", ns[1], "addr", "add", "198.18.201.2/30", "dev", "v1"},
		{"-n", ns[0], "link", "set", "v0", "up"},
		{"-n", ns[1], "link", "set", "v1", "up"},
		{"-n", ns[0], "link", "set", "lo", "up"},
		{"-n", ns[1], "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := runCmd(ctx, nil, "ip", s...); err != nil {
			return err
		}
	}
	srv := exec.Command("ip", append([]string{"netns", "exec", ns[0]}, r.taskset(bin, "server", "-port", "5201")...)...)
	srv.Stdout, srv.Stderr = os.Stderr, os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	r.b.cleanup.push("stop the veth netbench server", func(context.Context) error {
		_ = srv.Process.Kill()
		_ = srv.Wait()
		return nil
	})
	time.Sleep(200 * time.Millisecond) // the server listens
	for range r.b.cfg.dpTrials {
		for _, mode := range []string{"stream", "rr"} {
			args := append([]string{"netns", "exec", ns[1]}, r.taskset(bin, "client", "-addr", "198.18.201.1:5201",
				"-mode", mode, "-duration", r.b.cfg.dpDuration.String())...)
			out, err := runCmd(ctx, nil, "ip", args...)
			if err != nil {
				return err
			}
			m, err := netbenchFigures(out)
			if err != nil {
				return err
			}
			if mode == "stream" {
				res.VethStream = append(res.VethStream, m["gbps"])
			} else {
				res.VethRRMean = append(res.VethRRMean, m["mean_us"])
			}
		}
	}
	return nil
}

// taskset pins a command to the phase's CPU, unless -dp-cpu none.
func (r *clusterRun) taskset(args ...string) []string {
	if r.b.cfg.dpCPU == "none" {
		return args
	}
	return append([]string{"taskset", "-c", r.b.cfg.dpCPU}, args...)
}

// dockerRun: `docker run --rm busybox true` on A, on the cluster network
// and on the single-host network, trials alternated.
func (r *clusterRun) dockerRun(ctx context.Context, res *clusterResult) error {
	res.Run = &clusterPair{Op: "docker run --rm true, cluster / single-host network", Unit: "ms"}
	for range r.b.cfg.trials {
		for _, cluster := range []bool{true, false} {
			net := r.single
			if cluster {
				net = r.net
			}
			start := time.Now()
			if _, err := r.docker(ctx, r.a, "run", "--rm", "--label", r.label, "--net", net, r.busybox, "true"); err != nil {
				return err
			}
			addTo(res.Run, cluster, millis(time.Since(start)))
		}
	}
	res.Run.finish()
	return nil
}
