package main

import (
	"fmt"
	"io"
	"math"
)

// clusterTargets records issue 14's targets.
func clusterTargets(ts *targetList, c *clusterResult) {
	nan := math.NaN()
	pairRatio := func(p *clusterPair) float64 {
		if p == nil {
			return nan
		}
		return float64(p.Ratio)
	}
	v := pairRatio(c.streamOrNil())
	ts.add("cluster", "cross-host TCP stream >= 0.9x same-host", v, fmt.Sprintf("%.3fx", v), v >= 0.9)
	v = pairRatio(c.rrOrNil())
	ts.add("cluster", "cross-host 1-byte request/response (mean) <= 1.3x same-host", v, fmt.Sprintf("%.3fx", v), v <= 1.3)
	v = pairRatio(c.runOrNil())
	ts.add("cluster", "docker run on a cluster network <= 1.15x single-host", v, fmt.Sprintf("%.3fx", v), v <= 1.15)
	start, stop, prop, resync, mem := nan, nan, nan, nan, nan
	if c != nil {
		start, stop, resync = float64(c.WritesStart), float64(c.WritesStop), float64(c.Resync)
		if c.Propagation != nil {
			prop = float64(c.Propagation.P99Claim)
		}
		if c.RSS > 0 {
			mem = float64(c.RSS) / (1 << 20)
		}
	}
	ts.add("cluster", "etcd writes per container start <= 1", start, fmt.Sprintf("%.2f", start), start <= 1)
	ts.add("cluster", "etcd writes per container stop <= 1", stop, fmt.Sprintf("%.2f", stop), stop <= 1)
	ts.add("cluster", "from the claim on A to the entries on B, p99 <= 200 ms", prop, fmt.Sprintf("%.0f ms", prop), prop <= 200)
	ts.add("cluster", "resync of 1,000 remote endpoints after a restart <= 1 s", resync, fmt.Sprintf("%.0f ms", resync), resync <= 1000)
	ts.add("cluster", "RSS with 1,000 remote endpoints < 60 MiB", mem, fmt.Sprintf("%.1f MiB", mem), mem < 60)
}

func (c *clusterResult) streamOrNil() *clusterPair {
	if c == nil {
		return nil
	}
	return c.Stream
}

func (c *clusterResult) rrOrNil() *clusterPair {
	if c == nil {
		return nil
	}
	return c.RRMean
}

func (c *clusterResult) runOrNil() *clusterPair {
	if c == nil {
		return nil
	}
	return c.Run
}

// printCluster prints the phase's figures.
func printCluster(w io.Writer, c *clusterResult) {
	if c == nil {
		return
	}
	fmt.Fprintf(w, "\nCluster networks (phase cluster; A = cross-host or cluster network, B = same-host or single-host; medians)\n")
	tw := newTable(w)
	fmt.Fprintf(tw, "measure\tunit\tA\tB\tA/B\n")
	for _, p := range []*clusterPair{c.Stream, c.RRMean, c.RRP99, c.Run} {
		if p != nil {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.3f\n", p.Op, p.Unit, p.MedianA, p.MedianB, p.Ratio)
		}
	}
	if len(c.VethStream) > 0 {
		fmt.Fprintf(tw, "bare veth floor: TCP stream\tGbit/s\t%.2f\t\t\n", median(c.VethStream))
		fmt.Fprintf(tw, "bare veth floor: request/response mean\tus\t%.2f\t\t\n", median(c.VethRRMean))
	}
	fmt.Fprintf(tw, "etcd writes per container start / stop\t\t%.2f\t%.2f\t\n", c.WritesStart, c.WritesStop)
	if d := c.Propagation; d != nil {
		fmt.Fprintf(tw, "docker run on A to the entry on B, from run start, p50 / p99\tms\t%.0f\t%.0f\t\n", d.P50, d.P99)
		fmt.Fprintf(tw, "from the claim on A (end of its RequestAddress) to the entry on B, p50 / p99\tms\t%.0f\t%.0f\t\n", d.P50Claim, d.P99Claim)
	}
	fmt.Fprintf(tw, "resync of 1,000 remote endpoints after a restart\tms\t%.0f\t\t\n", c.Resync)
	fmt.Fprintf(tw, "RSS of B's mynet with 1,000 remote endpoints\tMiB\t%.1f\t\t\n", float64(c.RSS)/(1<<20))
	tw.Flush()
}
