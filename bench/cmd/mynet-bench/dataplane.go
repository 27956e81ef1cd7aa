package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// dataPlaneResult is phase 7: each figure on both networks.
type dataPlaneResult struct {
	Throughput *pairResult `json:"throughput_gbps"`
	RRMean     *pairResult `json:"rr_mean_us"`
	RRP99      *pairResult `json:"rr_p99_us"`
	MTU        []string    `json:"mtu_eth0,omitempty"` // mynet, bridge
}

// dataPlaneRun is one run of phase 7: the netbench image, the CPU pin and
// a server per network; clients come and go.
type dataPlaneRun struct {
	b       *bench
	img     string
	label   string
	pin     []string        // docker run flags
	servers map[bool]string // by side.mynet: address:port
	clients int
}

// dataPlane is phase 7: netbench between two containers of each network.
func (b *bench) dataPlane(ctx context.Context, sides []side, label string) error {
	img, err := b.ensureNetbench(ctx)
	if err != nil {
		return err
	}
	res := &dataPlaneResult{
		Throughput: &pairResult{Op: "TCP stream, 1 connection", Unit: "Gbit/s"},
		RRMean:     &pairResult{Op: "TCP request/response 1 byte, mean", Unit: "us"},
		RRP99:      &pairResult{Op: "TCP request/response 1 byte, p99", Unit: "us"},
	}
	d := &dataPlaneRun{b: b, img: img, label: label, servers: map[bool]string{}}
	// Server and client share one CPU, the same for both networks. Left to
	// the scheduler, the pair lands on one CPU or on two from one container
	// to the next, and on the benchmark VM that alone moves the
	// request/response time between about 35 and 75 us whatever the
	// network; pinned, repeated runs agree within 2%.
	if b.cfg.dpCPU != "none" {
		d.pin = []string{"--cpuset-cpus", b.cfg.dpCPU}
	}
	for _, s := range sides {
		if err := d.startServer(ctx, s); err != nil {
			return err
		}
	}
	logf("phase 7: %d trial(s) of %v stream and request/response per network", b.cfg.dpTrials, b.cfg.dpDuration)
	for t := range b.cfg.dpTrials {
		for _, mode := range []string{"stream", "rr"} {
			for _, s := range sides {
				r, err := d.client(ctx, s, mode)
				if err != nil {
					return err
				}
				if mode == "stream" {
					res.Throughput.add(s.mynet, r["gbps"])
					logf("phase 7: trial %d %s stream %.2f Gbit/s", t+1, s.label, r["gbps"])
				} else {
					res.RRMean.add(s.mynet, r["mean_us"])
					res.RRP99.add(s.mynet, r["p99_us"])
					logf("phase 7: trial %d %s rr mean %.1f us p99 %.1f us", t+1, s.label, r["mean_us"], r["p99_us"])
				}
			}
		}
	}
	res.Throughput.finish()
	res.RRMean.finish()
	res.RRP99.finish()
	b.rep.DataPlane = res
	return nil
}

// startServer starts the netbench server on s's network and records its
// address.
func (d *dataPlaneRun) startServer(ctx context.Context, s side) error {
	name := fmt.Sprintf("mnbench-%s-srv-%s", d.b.runID, s.label)
	args := append(append([]string{"run", "-d", "--name", name, "--label", d.label, "--net", s.network}, d.pin...), d.img, "server", "-port", "5201")
	if _, err := docker(ctx, args...); err != nil {
		return err
	}
	format := fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, s.network)
	ip, err := docker(ctx, "inspect", "-f", format, name)
	if err != nil {
		return err
	}
	d.servers[s.mynet] = ip + ":5201"
	return nil
}

// client runs one netbench client against s's server and returns the
// figures of its JSON line.
func (d *dataPlaneRun) client(ctx context.Context, s side, mode string) (map[string]float64, error) {
	// Removed by the harness rather than with --rm, so that the phase
	// ends with no removal still running in the daemon. (dockerd's
	// leaked endpoint count, "has active endpoints" with no container
	// attached, moby/moby#42119, happened here with either way.)
	d.clients++
	name := fmt.Sprintf("mnbench-%s-cli-%d", d.b.runID, d.clients)
	args := append(append([]string{"run", "--name", name, "--label", d.label, "--net", s.network}, d.pin...), d.img,
		"client", "-addr", d.servers[s.mynet], "-mode", mode, "-duration", d.b.cfg.dpDuration.String())
	out, err := docker(ctx, args...)
	if _, rmErr := docker(ctx, "rm", "-f", name); err == nil {
		err = rmErr
	}
	if err != nil {
		return nil, err
	}
	last := out[strings.LastIndex(out, "\n")+1:]
	var raw map[string]any
	if err := json.Unmarshal([]byte(last), &raw); err != nil {
		return nil, fmt.Errorf("netbench output %q: %w", out, err)
	}
	r := map[string]float64{}
	for k, v := range raw {
		if f, ok := v.(float64); ok {
			r[k] = f
		}
	}
	return r, nil
}
