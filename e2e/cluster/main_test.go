package cluster

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// script is the harness under test, relative to e2e/cluster.
	script = "../../scripts/cluster.sh"
	// base, prefix: where and under which names the harness keeps
	// everything (scripts/cluster.sh BASE and PREFIX).
	base   = "/run/mynet-cluster"
	prefix = "mynet-cluster"
	// etcdctl is the harness's etcdctl (API v3); run it in a host's
	// namespace, where etcd's endpoint is reachable.
	etcdctl = base + "/etcd/etcdctl"
	// hosts is how many hosts the suite brings up.
	hosts = 2
)

// host is one Docker host of the harness, as `up` printed it.
type host struct {
	letter     string
	dockerHost string // unix://...
	netns      string
}

// env is what TestMain set up for every scenario.
var env struct {
	skip string // why every scenario skips, if set
	bin  string // the mynet binary
	// noCluster is why the cluster scenarios skip: the binary has no
	// cluster mode (issue 14's serve flags), or the flags were overridden
	// without it. The harness tests run either way.
	noCluster string
	hosts     []*host
	etcd      struct {
		endpoint string
		pid      int
	}
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if reason := missingPrerequisite(); reason != "" {
		if os.Getenv("CI") == "true" || os.Getenv("MYNET_E2E_REQUIRED") == "1" {
			fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: %s (the suite must run when CI=true or MYNET_E2E_REQUIRED=1)\n", reason)
			return 1
		}
		fmt.Fprintf(os.Stderr, "cluster e2e: skipping every scenario: %s\n", reason)
		env.skip = reason
		return m.Run()
	}
	if _, err := os.Stat(base); err == nil {
		fmt.Println("cluster e2e: a cluster is up already (an earlier run killed, or a manual one): taking it down first")
		if _, err := harness("down"); err != nil {
			fmt.Fprintf(os.Stderr, "cluster e2e: %v\n", err)
			return 1
		}
	}
	hadPluginSocket = exists("/run/docker/plugins/mynet.sock") // a developer's own mynet
	if err := setServeArgs(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: %v\n", err)
		return 1
	}
	start := time.Now()
	out, err := harness("up", strconv.Itoa(hosts))
	if err == nil {
		err = parseUp(out, hosts)
	}
	if err == nil {
		err = importImage()
	}
	up := time.Since(start)
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: bringing the cluster up: %v\n", err)
	} else {
		start = time.Now()
		code = m.Run()
		fmt.Printf("cluster e2e: scenarios took %v\n", time.Since(start).Round(time.Millisecond))
		if left := storeLeftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: after the scenarios, etcd still has:\n  %s\n", strings.Join(left, "\n  "))
			code = 1
		}
	}
	start = time.Now()
	if _, err := harness("down"); err != nil {
		fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: %v\n", err)
		code = 1
	}
	down := time.Since(start)
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "cluster e2e: FAIL: after down, the machine still has:\n  %s\n", strings.Join(left, "\n  "))
		code = 1
	}
	fmt.Printf("cluster e2e: up (with the image) took %v, down %v\n", up.Round(time.Millisecond), down.Round(time.Millisecond))
	return code
}

// missingPrerequisite returns why the suite cannot run here, or "".
func missingPrerequisite() string {
	if os.Geteuid() != 0 {
		return "not root: the harness makes namespaces, mounts and engines"
	}
	for _, tool := range []string{"docker", "dockerd", "ctr", "ip", "nsenter", "unshare", "flock", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not found on PATH"
		}
	}
	if err := requireStatic("/bin/busybox"); err != nil {
		return err.Error()
	}
	if _, err := run("ctr", "--address", "/run/containerd/containerd.sock", "version"); err != nil {
		return "the machine's containerd does not answer on /run/containerd/containerd.sock (the hosts share it)"
	}
	bin := os.Getenv("MYNET_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "bin", "mynet")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err.Error()
	}
	if fi, err := os.Stat(abs); err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Sprintf("plugin binary %s missing or not executable (run `make build` or set MYNET_BIN)", abs)
	}
	env.bin = abs
	return ""
}

// harness runs scripts/cluster.sh with args; its stderr (progress, timings)
// goes to ours, its stdout is returned.
func harness(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, args...)
	cmd.Env = append(os.Environ(), "MYNET_BIN="+env.bin)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w", script, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// hadPluginSocket: this machine's plugin directory had a mynet.sock
// before up.
var hadPluginSocket bool

var (
	hostLine = regexp.MustCompile(`^host ([a-z]): DOCKER_HOST=(unix:///\S+) netns=(\S+)$`)
	etcdLine = regexp.MustCompile(`^etcd: (\S+) pid=([0-9]+)$`)
)

// parseUp reads up's output, which is a contract: exactly n host lines, in
// order a, b, ..., and one etcd line, nothing else.
func parseUp(out string, n int) error {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := hostLine.FindStringSubmatch(line); m != nil {
			env.hosts = append(env.hosts, &host{letter: m[1], dockerHost: m[2], netns: m[3]})
			continue
		}
		if m := etcdLine.FindStringSubmatch(line); m != nil && env.etcd.endpoint == "" {
			env.etcd.endpoint = m[1]
			env.etcd.pid, _ = strconv.Atoi(m[2])
			continue
		}
		return fmt.Errorf("up printed %q, which is neither a host line nor the one etcd line; all of it:\n%s", line, out)
	}
	if len(env.hosts) != n || env.etcd.endpoint == "" {
		return fmt.Errorf("up %d printed %d host lines and %d etcd lines, want %d and 1:\n%s",
			n, len(env.hosts), min(1, len(env.etcd.endpoint)), n, out)
	}
	for i, h := range env.hosts {
		if want := string(rune('a' + i)); h.letter != want {
			return fmt.Errorf("host line %d names host %s, want %s:\n%s", i+1, h.letter, want, out)
		}
	}
	return nil
}

// leftovers lists what the harness left on the machine after down: its
// directory, mounts, namespaces, containerd namespaces, cgroups, processes.
func leftovers() []string {
	var left []string
	if _, err := os.Stat(base); err == nil {
		left = append(left, "directory "+base)
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mounts), "\n") {
			if strings.Contains(l, base) || strings.Contains(l, "/run/netns/"+prefix) {
				left = append(left, "mount "+l)
			}
		}
	}
	nss, _ := filepath.Glob("/run/netns/" + prefix + "*")
	for _, ns := range nss {
		left = append(left, "network namespace "+ns)
	}
	if out, err := run("ctr", "--address", "/run/containerd/containerd.sock", "namespaces", "ls", "-q"); err == nil {
		for _, ns := range strings.Fields(out) {
			if strings.HasPrefix(ns, prefix) {
				left = append(left, "containerd namespace "+ns)
			}
		}
	} else {
		left = append(left, err.Error())
	}
	// The underlay's veths (ul0 in each namespace, ul-X on the bridge) live
	// and die with the namespaces; one here would have been made in ours.
	if out, err := run("ip", "-o", "link", "show"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && (strings.HasPrefix(f[1], "ul0") || strings.HasPrefix(f[1], "ul-")) {
				left = append(left, "link in this namespace: "+l)
			}
		}
	}
	if !hadPluginSocket && exists("/run/docker/plugins/mynet.sock") {
		left = append(left, "/run/docker/plugins/mynet.sock, which a host's mynet should have made in its own plugin directory")
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix + "-*")
	more, _ := filepath.Glob("/sys/fs/cgroup/" + prefix + "-*")
	for _, cg := range append(cgs, more...) {
		left = append(left, "cgroup "+cg)
	}
	return append(left, leftoverProcesses()...)
}

// leftoverProcesses finds processes of the harness by their command lines:
// every daemon it starts names a path under base, every shim its
// containerd namespace.
func leftoverProcesses() []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil || len(raw) == 0 {
			continue // gone, or a kernel thread
		}
		cmdline := string(bytes.ReplaceAll(bytes.TrimRight(raw, "\x00"), []byte{0}, []byte{' '}))
		if strings.Contains(cmdline, base+"/") || strings.Contains(cmdline, "-namespace "+prefix) {
			pid := strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/cmdline")
			if stat, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil && zombie(stat) {
				continue // dead, not yet reaped (late here)
			}
			left = append(left, fmt.Sprintf("process %s: %s", pid, cmdline))
		}
	}
	return left
}

func zombie(stat []byte) bool {
	_, rest, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(rest, "Z")
}

// requireStatic fails unless path is a statically linked ELF binary: the
// test image has no libc.
func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New(path + " is dynamically linked; install busybox-static")
		}
	}
	return nil
}
