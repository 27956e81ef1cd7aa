package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The tests of this file use 10.129.11.0/24.

// TestE2EDamagedStateKeepsContainers: a running container keeps its eth0
// and its connectivity when the plugin is restarted on a damaged state
// file (issue 10, defect 1). Each time the plugin is stopped, the file
// damaged, and the plugin started again: it must exit 78 naming the file
// (and the record) without touching the kernel; the test then restores
// the file, as the README's recovery says, and the plugin serves again
// with everything in place.
func TestE2EDamagedStateKeepsContainers(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.129.11.0/24")
	n := s.mynetNetwork("net", subnet.String())
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)
	nid := strings.TrimSpace(docker(t, "network", "inspect", "-f", "{{.Id}}", n))
	connected := func(phase string) {
		t.Helper()
		s.expectOnlyEth0(a, gateway(subnet))
		s.expectOnlyEth0(b, gateway(subnet))
		if got := s.ips(n, a, b); got[0] != addrs[0] || got[1] != addrs[1] {
			t.Errorf("%s: addresses %v, want %v", phase, got, addrs)
		}
		for i, c := range []string{a, b} {
			if out := s.exec(c, "ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, addrs[i].String()+"/24") {
				t.Errorf("%s: %s's eth0 lost %s:\n%s", phase, c, addrs[i], out)
			}
		}
		s.expectPing(a, addrs[1].String())
		s.expectPing(b, addrs[0].String())
	}
	connected("before")

	path := filepath.Join(env.plugin.stateDir, "mynet.db")
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T)
		wants  []string
	}{
		{"zero-length state file", func(t *testing.T) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{"new, empty state", "--discard-orphans"}},
		{"undecodable network record", func(t *testing.T) {
			putRecord(t, path, "networks", nid, "{not json")
		}, []string{"record networks/" + nid}},
	} {
		env.plugin.note("%s: %s", t.Name(), tc.name)
		if err := env.plugin.halt(); err != nil {
			t.Fatal(err)
		}
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		tc.damage(t)
		out, err := env.plugin.run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 78 {
			t.Errorf("%s: the plugin exited with %v, want status 78:\n%s", tc.name, err, out)
		}
		for _, w := range append(tc.wants, path, "Recovering the state") {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the message does not name %q:\n%s", tc.name, w, out)
			}
		}
		connected("with a " + tc.name)

		// Recovery: the good copy back.
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := env.plugin.start(); err != nil {
			t.Fatal(err)
		}
		s.expectPluginState("after restoring the file", 10*time.Second, map[string][]string{n: {a, b}})
		connected("after restoring the file")
		if t.Failed() {
			return
		}
	}
	// The plugin still works: a new container gets a new address and
	// reaches the others.
	c := s.container("c", n)
	s.expectPing(c, addrs[0].String())
}

// putRecord writes raw bytes under bucket/key of the stopped plugin's
// state file.
func putRecord(t *testing.T, path, bucket, key, value string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil || b.Get([]byte(key)) == nil {
			return fmt.Errorf("no record %s/%s to damage", bucket, key)
		}
		return b.Put([]byte(key), []byte(value))
	}); err != nil {
		t.Fatal(err)
	}
}

// halt stops the daemon with SIGTERM, keeping its state (stop removes it).
func (p *plugin) halt() error {
	if p.running() {
		if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
			return err
		}
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
			return fmt.Errorf("plugin still running %v after SIGINT; killed it", stopTimeout)
		}
	}
	if err := os.Remove(p.socketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// run runs the daemon with the usual flags and returns when it exits (it
// is expected to refuse to start), with its output, which also goes to
// the log.
func (p *plugin) run() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p.bin, append([]string{"serve", "--name", p.name, "--state-dir", p.stateDir, "--log-level", "debug"}, firewallArgs()...)...).CombinedOutput()
	p.note("refused start:\n%s", out)
	os.Remove(p.socketPath()) // in case it served after all
	return string(out), err
}
