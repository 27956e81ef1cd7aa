package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cmdTimeout bounds one command: the engine retries an unreachable plugin
// for about 15 s per lookup, so this leaves room for several.
const cmdTimeout = 3 * time.Minute

// runCmd runs a command and returns its combined output, trimmed; the error
// carries the command line and the output.
func runCmd(ctx context.Context, stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	cmd.WaitDelay = 5 * time.Second
	raw, err := cmd.CombinedOutput()
	out := strings.TrimSpace(string(raw))
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out, fmt.Errorf("`%s %s`: %v: %s", name, strings.Join(args, " "), err, lastLines(out, 5))
	}
	return out, nil
}

// timed runs a command and returns how long it took.
func timed(ctx context.Context, name string, args ...string) (time.Duration, string, error) {
	start := time.Now()
	out, err := runCmd(ctx, nil, name, args...)
	return time.Since(start), out, err
}

func docker(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, nil, "docker", args...)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// machine describes where the figures come from.
type machine struct {
	Hostname      string `json:"hostname"`
	CPUs          int    `json:"nproc"`
	CPUModel      string `json:"cpu_model"`
	MemTotal      string `json:"mem_total"`
	Kernel        string `json:"kernel"`
	OS            string `json:"os"`
	DockerServer  string `json:"docker_server"`
	DockerClient  string `json:"docker_client"`
	StorageDriver string `json:"docker_storage_driver"`
	Iptables      string `json:"iptables"`
	GoVersion     string `json:"go_build"`
	MynetCommit   string `json:"mynet_commit"`
	MynetBinary   string `json:"mynet_binary_sha256"`
	LoadAvg       string `json:"loadavg_at_start"`
}

func machineInfo(mynetBin string) machine {
	ctx := context.Background()
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	m.Kernel, _ = runCmd(ctx, nil, "uname", "-r")
	if raw, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		first, _, _ := strings.Cut(string(raw), "\n")
		m.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(first, "MemTotal:")), " ")
	}
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.TrimSpace(string(raw))
	}
	m.DockerServer, _ = docker(ctx, "version", "--format", "{{.Server.Version}}")
	m.DockerClient, _ = docker(ctx, "version", "--format", "{{.Client.Version}}")
	m.StorageDriver, _ = docker(ctx, "info", "--format", "{{.Driver}}")
	m.Iptables, _ = runCmd(ctx, nil, "iptables", "--version")
	if out, err := runCmd(ctx, nil, "git", "describe", "--always", "--dirty"); err == nil {
		m.MynetCommit = out
	}
	if out, err := runCmd(ctx, nil, "sha256sum", mynetBin); err == nil {
		m.MynetBinary, _, _ = strings.Cut(out, " ")
	}
	return m
}

// lockFile takes an exclusive flock(2) on path, the lock flock(1) takes,
// waiting for other holders (other engineers' e2e runs). When the process
// already holds it through a descriptor inherited from `flock path
// mynet-bench ...`, that descriptor is used and nothing is waited for.
// The returned function releases the lock.
func lockFile(ctx context.Context, path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	if fd, ok := inheritedFD(path); ok {
		if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			logf("using the lock on %s held by the parent (flock)", path)
			return func() {}, nil
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		logf("waiting for %s (someone else is using dockerd)", path)
		// A blocking flock queues in the kernel like flock(1)'s waiters, so
		// this run gets its turn; polling would lose every race to them.
		// It cannot be interrupted: on cancel, the goroutine releases the
		// lock as soon as it gets it.
		var mu sync.Mutex
		abandoned := false
		got := make(chan error, 1)
		go func() {
			err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
			mu.Lock()
			defer mu.Unlock()
			if abandoned {
				f.Close() // closing the last descriptor releases the lock
				return
			}
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("lock %s: %w", path, err)
			}
		case <-ctx.Done():
			mu.Lock()
			abandoned = true
			mu.Unlock()
			select { // it may have just been granted
			case err := <-got:
				if err == nil {
					f.Close()
				}
			default:
			}
			return nil, ctx.Err()
		}
	}
	logf("holding %s", path)
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
		logf("released %s", path)
	}, nil
}

// inheritedFD finds an open descriptor of path among the process's own.
func inheritedFD(path string) (int, bool) {
	var want syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		return 0, false
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, false
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return fd, true
		}
	}
	return 0, false
}

// rss reads VmRSS and VmHWM of pid, in bytes.
func rss(pid int) (cur, peak int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			cur = n << 10
		case "VmHWM":
			peak = n << 10
		}
	}
	if cur == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return cur, peak, nil
}

// countMynetRules counts the rules (-A lines) of an iptables-save dump that
// mention mynet, in any table.
func countMynetRules(dump string) int {
	n := 0
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(strings.ToLower(l), "mynet") {
			n++
		}
	}
	return n
}

// countNftBridge counts the chains and rules of mynet's nftables bridge
// tables (table bridge mynet...) in `nft list ruleset` output. A rule is a
// statement line inside a chain: not the chain's type/policy line.
func countNftBridge(ruleset string) (chains, rules int) {
	inTable, inChain := false, false
	for _, l := range strings.Split(ruleset, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "table "):
			f := strings.Fields(t)
			inTable = len(f) >= 3 && f[1] == "bridge" && strings.HasPrefix(f[2], "mynet")
		case !inTable:
		case strings.HasPrefix(t, "chain "):
			chains++
			inChain = true
		case t == "}":
			inChain = false
		case inChain && t != "" && !strings.HasPrefix(t, "type ") && !strings.HasPrefix(t, "policy "):
			rules++
		}
	}
	return chains, rules
}

// goBinary finds the go command for building netbench and running the Go
// benchmarks: $GO, then PATH, then the usual install places (sudo's PATH
// often lacks it).
func goBinary() (string, error) {
	if g := os.Getenv("GO"); g != "" { // make passes $(GO)
		if p, err := exec.LookPath(g); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/local/go/bin/go", "/usr/lib/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("go not found on PATH or in /usr/local/go/bin")
}

// buildStatic builds a Go package statically and returns the binary path.
func buildStatic(ctx context.Context, pkg, out string) error {
	goBin, err := goBinary()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %v: %s", pkg, err, buf.String())
	}
	return nil
}
