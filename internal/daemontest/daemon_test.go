package daemontest

// Tests of the real daemon binary, run in a throwaway network namespace
// and driven straight through its socket, the way the engine drives it.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mynet/mynet/netutil/nstest"
)

// daemonBin is built once per test binary run.
var daemonBin string

// pluginDir is where the daemon puts its socket (serve --name NAME listens
// on pluginDir/NAME.sock).
const pluginDir = "/run/docker/plugins"

// requestDeadlineEnv shortens the daemon's request deadline (see
// cmd/mynet's requestDeadline).
const requestDeadlineEnv = "MYNET_TEST_REQUEST_DEADLINE"

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "mynet-bin")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			daemonBin = filepath.Join(dir, "mynet")
			if out, err := exec.Command("go", "build", "-o", daemonBin, "github.com/mynet/mynet/cmd/mynet").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build mynet: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// testNS is a named network namespace for one test.
type testNS struct{ name string }

func newNS(t *testing.T) *testNS {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "iptables")
	ns := &testNS{name: "mnt-" + randHex(4)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.name).Run() })
	ns.run(t, "ip", "link", "set", "lo", "up")
	// A host always has these tables; iptables-nft makes them on first use.
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat"} {
			ns.run(t, cmd, "-t", table, "-N", "PRIME")
			ns.run(t, cmd, "-t", table, "-X", "PRIME")
		}
	}
	return ns
}

func (ns *testNS) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// snapshot is what mynet may change in the namespace: links and rules.
func (ns *testNS) snapshot(t *testing.T) string {
	links := ns.run(t, "ip", "-o", "link", "show")
	var names []string
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	var rules []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		for _, l := range strings.Split(ns.run(t, cmd), "\n") {
			if strings.Contains(l, "MYNET") || strings.Contains(l, "mynet") {
				rules = append(rules, strings.SplitN(l, " [", 2)[0])
			}
		}
	}
	return "links: " + strings.Join(names, " ") + "\nrules:\n" + strings.Join(rules, "\n")
}

// daemon is one mynet process inside a test namespace.
type daemon struct {
	t          *testing.T
	ns         *testNS
	name, dir  string
	sock       string
	cmd        *exec.Cmd
	log        *syncBuffer
	client     *http.Client
	failpoints string
	// reconcileInterval is --reconcile-interval; "" means 0 (off).
	reconcileInterval string
	// env is added to the daemon's environment at each start.
	env []string
	// args are more flags for serve.
	args []string
}

func startDaemon(t *testing.T, ns *testNS) *daemon {
	d := &daemon{t: t, ns: ns, name: "mnt-" + randHex(4), dir: t.TempDir(), log: &syncBuffer{}}
	d.sock = filepath.Join(pluginDir, d.name+".sock")
	d.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
		}, DisableKeepAlives: true},
	}
	d.start("")
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) start(failpoints string) {
	d.t.Helper()
	d.failpoints = failpoints
	interval := d.reconcileInterval
	if interval == "" {
		interval = "0"
	}
	d.cmd = exec.Command("ip", append([]string{"netns", "exec", d.ns.name, daemonBin, "serve", "--name", d.name,
		"--state-dir", d.dir, "--log-level", "debug", "--reconcile-interval", interval}, d.args...)...)
	d.cmd.Env = append(append(os.Environ(), d.env...), "MYNET_FAILPOINTS="+failpoints)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, _, err := d.call("Plugin.Activate", nil); err == nil && code == 200 {
			return
		}
	}
	d.t.Fatalf("daemon did not answer; log:\n%s", d.log)
}

// wait reaps the process after a failpoint killed it.
func (d *daemon) wait() {
	d.cmd.Wait()
}

func (d *daemon) stop() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
		}
	}
	os.Remove(d.sock)
	if d.t.Failed() {
		d.t.Logf("daemon log:\n%s", d.log)
	}
}

func (d *daemon) call(method string, body any) (int, map[string]any, error) {
	var rd io.Reader = http.NoBody
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	resp, err := d.client.Post("http://plugin/"+method, "application/json", rd)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out, nil
}

func (d *daemon) mustCall(method string, body any) map[string]any {
	d.t.Helper()
	code, out, err := d.call(method, body)
	if err != nil || code != 200 {
		d.t.Fatalf("%s: %d %v %v\nlog:\n%s", method, code, out, err, d.log)
	}
	return out
}

type dump struct {
	Networks, Endpoints []map[string]any
	Pools               []struct {
		ID    string
		Addrs []string
	}
}

func (d *daemon) state() dump {
	d.t.Helper()
	var s dump
	raw, _ := json.Marshal(d.mustCall("Mynet.State", nil))
	json.Unmarshal(raw, &s)
	return s
}

// syncBuffer is a daemon's log: written by the process's output copier
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
