package main

import (
	"bufio"
	"io"
	"os"
	"regexp"
	"sort"
	"time"
)

// pluginTime is the time mynet itself spent serving requests during a
// phase, from the "request" lines its router logs with each call's
// duration: what the plugin adds to a container or network operation,
// apart from the engine's own work and the socket round trips.
type pluginTime struct {
	Units     int               `json:"units"` // containers or networks in the phase
	PerUnitMs num               `json:"per_unit_ms"`
	Ops       map[string]opTime `json:"ops"`
}

type opTime struct {
	Calls   int `json:"calls"`
	TotalMs num `json:"total_ms"`
	MeanMs  num `json:"mean_ms"`
}

var requestLineRE = regexp.MustCompile(`msg="?request(?: failed)?"? .*\bop=(\S+) .*\bduration=(\S+)`)

// logSize is where the next phase's lines start.
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readPluginTime sums the durations of the requests logged after offset.
func readPluginTime(path string, offset int64, units int) *pluginTime {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	return parsePluginTime(f, units)
}

// readPluginTimeRange sums the durations of the requests logged between
// two offsets of the log.
func readPluginTimeRange(path string, from, to int64) *pluginTime {
	f, err := os.Open(path)
	if err != nil || to < from {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil
	}
	return parsePluginTime(io.LimitReader(f, to-from), 0)
}

func parsePluginTime(r io.Reader, units int) *pluginTime {
	sums := map[string]time.Duration{}
	calls := map[string]int{}
	var total time.Duration
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := requestLineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		d, err := time.ParseDuration(m[2])
		if err != nil {
			continue
		}
		sums[m[1]] += d
		calls[m[1]]++
		total += d
	}
	pt := &pluginTime{Units: units, Ops: map[string]opTime{}}
	for op, d := range sums {
		pt.Ops[op] = opTime{Calls: calls[op], TotalMs: num(millis(d)), MeanMs: num(millis(d) / float64(calls[op]))}
	}
	if units > 0 {
		pt.PerUnitMs = num(millis(total) / float64(units))
	}
	return pt
}

// topOps returns the ops by total time, largest first.
func (p *pluginTime) topOps() []string {
	ops := make([]string, 0, len(p.Ops))
	for op := range p.Ops {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool { return p.Ops[ops[i]].TotalMs > p.Ops[ops[j]].TotalMs })
	return ops
}
