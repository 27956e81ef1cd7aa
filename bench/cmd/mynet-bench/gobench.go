package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// goBenchResult is one line of `go test -bench` output.
type goBenchResult struct {
	Package     string  `json:"package"`
	Name        string  `json:"name"`
	Iterations  int64   `json:"iterations"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  int64   `json:"bytes_per_op"`
	AllocsPerOp int64   `json:"allocs_per_op"`
}

// goBenchPackages hold the hot-path benchmarks: the IPAM allocator
// (BenchmarkAllocateNearlyFull in ipam/pool_test.go), the state commit of an
// endpoint and option parsing.
var goBenchPackages = []string{"./ipam", "./state", "./plugin"}

// goBenchmarks runs the packages' Go benchmarks from the repository root
// (the current directory, as under make).
func (b *bench) goBenchmarks(ctx context.Context) error {
	goBin, err := goBinary()
	if err != nil {
		return err
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return fmt.Errorf("run from the repository root (no go.mod here): %w", err)
	}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", b.cfg.gobenchTime, "-count", "1"}, goBenchPackages...)
	logf("go: %s %s", goBin, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, goBin, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	b.rep.GoBench = parseGoBench(buf.String())
	if err != nil {
		return fmt.Errorf("go test -bench: %v:\n%s", err, lastLines(buf.String(), 20))
	}
	return nil
}

// parseGoBench reads benchmark lines, remembering the package from the
// preceding "pkg:" line; the -GOMAXPROCS suffix is dropped from names.
func parseGoBench(out string) []goBenchResult {
	var res []goBenchResult
	pkg := ""
	for _, line := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || f[3] != "ns/op" {
			continue
		}
		r := goBenchResult{Package: pkg, Name: f[0]}
		if i := strings.LastIndex(r.Name, "-"); i > 0 {
			if _, err := strconv.Atoi(r.Name[i+1:]); err == nil {
				r.Name = r.Name[:i]
			}
		}
		r.Iterations, _ = strconv.ParseInt(f[1], 10, 64)
		r.NsPerOp, _ = strconv.ParseFloat(f[2], 64)
		for i := 4; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			switch f[i+1] {
			case "B/op":
				r.BytesPerOp = v
			case "allocs/op":
				r.AllocsPerOp = v
			}
		}
		res = append(res, r)
	}
	return res
}
