package cluster

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterEtcd: etcd runs under the PID up printed, and every host
// reaches the same etcd over the underlay: a key one host writes, the other
// reads.
func TestClusterEtcd(t *testing.T) {
	requireCluster(t)
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(env.etcd.pid) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "etcd" {
		t.Fatalf("etcd's pid %d: comm %q, %v; want a running etcd", env.etcd.pid, comm, err)
	}
	for _, h := range env.hosts {
		if out := h.etcdctl(t, "endpoint", "health"); !strings.Contains(out, "is healthy") {
			t.Errorf("host %s: etcdctl endpoint health: %s", h.letter, out)
		}
	}
	a, b := env.hosts[0], env.hosts[1]
	key, val := "/mynet-e2e/probe-"+randHex(4), randHex(8)
	a.etcdctl(t, "put", key, val)
	t.Cleanup(func() { a.etcdctl(t, "del", key) })
	if got := b.etcdctl(t, "get", "--print-value-only", key); got != val {
		t.Errorf("host b reads %s = %q, want %q (written by host a)", key, got, val)
	}
}

// TestClusterLocalNetworks: without cluster mode, each host is a Docker
// host of its own. A mynet network on a and one on b (the same subnet, as a
// cluster network will have) each get a bridge in their own host's
// namespace only, so each engine talks to its own mynet; a container on
// each reaches its own gateway; removing them leaves no bridge behind.
func TestClusterLocalNetworks(t *testing.T) {
	requireCluster(t)
	const subnet = "10.77.0.0/24"
	prefix, err := netip.ParsePrefix(subnet)
	if err != nil {
		t.Fatal(err)
	}
	name := "local-" + randHex(3)
	bridges := map[*host]string{}
	for _, h := range env.hosts {
		id := h.docker(t, "network", "create", "-d", "mynet", "--ipam-driver", "mynet", "--subnet", subnet, name)
		t.Cleanup(func() { _, _ = h.dockerErr("network", "rm", name) })
		bridges[h] = "mn-" + id[:12]
	}
	for _, h := range env.hosts {
		for _, other := range env.hosts {
			if got := hasLink(t, other.netns, bridges[h]); got != (other == h) {
				t.Errorf("bridge %s of host %s's network: in %s: %v, want %v", bridges[h], h.letter, other.netns, got, other == h)
			}
		}
		if hasLink(t, "", bridges[h]) {
			t.Errorf("bridge %s of host %s's network is in this machine's own namespace", bridges[h], h.letter)
		}
	}

	for _, h := range env.hosts {
		ctr := name + "-" + h.letter
		h.docker(t, "run", "-d", "--name", ctr, "--net", name, testImage, "sleep", "300")
		t.Cleanup(func() { _, _ = h.dockerErr("rm", "-f", ctr) })
		gw, addr := containerAddrs(t, h, ctr)
		if !prefix.Contains(gw) || !prefix.Contains(addr) || gw == addr {
			t.Errorf("host %s: container %s at %s, gateway %s: want two addresses of %s", h.letter, ctr, addr, gw, subnet)
		}
		if out, err := h.dockerErr("exec", ctr, "ping", "-c", "1", "-W", "2", gw.String()); err != nil {
			t.Errorf("host %s: container %s does not reach its gateway %s: %v\n%s", h.letter, ctr, gw, err, out)
		}
	}

	for _, h := range env.hosts {
		h.docker(t, "rm", "-f", name+"-"+h.letter)
		h.docker(t, "network", "rm", name)
		if hasLink(t, h.netns, bridges[h]) {
			t.Errorf("host %s: bridge %s is still there after network rm", h.letter, bridges[h])
		}
	}
}

// TestClusterPluginsArePrivate: a plugin started on host a is found by a's
// engine and by no other: its socket is in a's plugin directory only, and
// b's engine answers "not found" for it.
func TestClusterPluginsArePrivate(t *testing.T) {
	requireCluster(t)
	a, b := env.hosts[0], env.hosts[1]
	solo := "mynet-e2e-solo-" + randHex(3)
	dir := t.TempDir()
	log, err := os.Create(filepath.Join(dir, "solo.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(script, "exec", a.letter, env.bin, "serve", "--name", solo,
		"--state-dir", filepath.Join(dir, "state"), "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopSolo(t, cmd, log.Name()) })

	sock := solo + ".sock"
	deadline := time.Now().Add(10 * time.Second)
	for !exists(filepath.Join(base, a.letter, "plugins", sock)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s serves no %s in host a's plugin directory after 10 s; log %s", solo, sock, log.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range []string{"/run/docker/plugins/" + sock, filepath.Join(base, b.letter, "plugins", sock)} {
		if exists(p) {
			t.Errorf("host a's plugin %s is visible as %s", solo, p)
		}
	}

	create := []string{"network", "create", "-d", solo, "--ipam-driver", solo, "--subnet", "10.78.0.0/24", solo}
	a.docker(t, create...)
	a.docker(t, "network", "rm", solo)
	out, err := b.dockerErr(create...)
	if err == nil {
		_, _ = b.dockerErr("network", "rm", solo)
		t.Fatalf("host b created a network with host a's plugin %s: %s", solo, out)
	}
	if !strings.Contains(out, "not found") {
		t.Errorf("host b, network create -d %s: %v; want the plugin not found", solo, err)
	}
}

// containerAddrs returns the gateway of ctr's default route and its
// address, as the container sees them.
func containerAddrs(t *testing.T, h *host, ctr string) (gw, addr netip.Addr) {
	t.Helper()
	route := strings.Fields(h.docker(t, "exec", ctr, "ip", "-4", "route", "show", "default"))
	// "default via 10.77.0.1 dev eth0"
	if len(route) < 3 || route[1] != "via" {
		t.Fatalf("host %s: container %s has no default route via a gateway: %q", h.letter, ctr, route)
	}
	gw, err := netip.ParseAddr(route[2])
	if err != nil {
		t.Fatalf("host %s: container %s's default route: %v", h.letter, ctr, err)
	}
	// "5: eth0    inet 10.77.0.2/24 brd 10.77.0.255 scope global eth0..."
	fields := strings.Fields(h.docker(t, "exec", ctr, "ip", "-4", "-o", "addr", "show", "eth0"))
	i := slices.Index(fields, "inet")
	if i < 0 || i+1 >= len(fields) {
		t.Fatalf("host %s: container %s's eth0 has no IPv4 address: %q", h.letter, ctr, fields)
	}
	p, err := netip.ParsePrefix(fields[i+1])
	if err != nil {
		t.Fatalf("host %s: container %s's eth0: %v", h.letter, ctr, err)
	}
	return gw, p.Addr()
}

func stopSolo(t *testing.T, cmd *exec.Cmd, log string) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the plugin of host a's own (log %s) exited: %v", log, err)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Errorf("the plugin of host a's own did not stop on SIGTERM within 10 s (log %s)", log)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
