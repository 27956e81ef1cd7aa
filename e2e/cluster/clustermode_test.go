package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/model"
)

const (
	// deadGrace is --cluster-dead-grace for every host: a dead host's
	// claims are freed this long after its liveness key expired. Long
	// enough that a partitioned host (whose lease expires after leaseTTL)
	// is seen degraded and comes back before the others free its claims,
	// short enough for the dead-host scenario to fit the suite's budget.
	deadGrace = 15 * time.Second
	// leaseTTL is the liveness lease (internal/cluster DefaultLeaseTTL).
	leaseTTL = 15 * time.Second
	// clusterRoot is the store's key root (model.DefaultClusterRoot).
	clusterRoot = model.DefaultClusterRoot
	// storeDeadline is the bound on a cluster create with etcd
	// unreachable.
	storeDeadline = 10 * time.Second
)

// defaultServeArgs puts every host's mynet in cluster mode, with a metrics
// socket the scenarios read (scripts/cluster.sh fills in the braces).
var defaultServeArgs = strings.Join([]string{
	"--cluster-store etcd://{etcd}",
	"--vtep-addr {vtep}",
	"--host-id " + prefix + "-{host}",
	"--cluster-dead-grace " + deadGrace.String(),
	"--metrics-socket " + base + "/{host}/metrics.sock",
}, " ")

// setServeArgs puts every host's mynet in cluster mode when the binary has
// it: defaultServeArgs, then the caller's MYNET_CLUSTER_SERVE_ARGS (a flag
// given again wins: Go's flag package keeps the last; scripts/cluster.sh
// may pass the cluster flags itself too). Without cluster mode the cluster
// scenarios skip, saying why; the harness tests run either way.
func setServeArgs() error {
	// `serve -h` lists the flags (and exits non-zero: ErrHelp).
	help, _ := run(env.bin, "serve", "-h")
	if !strings.Contains(help, "-cluster-store") {
		env.noCluster = env.bin + " has no --cluster-store (issue 14's cluster mode): the cluster scenarios need it"
		return nil
	}
	args := strings.TrimSpace(defaultServeArgs + " " + os.Getenv("MYNET_CLUSTER_SERVE_ARGS"))
	fmt.Printf("cluster e2e: mynet serve ... %s\n", args)
	return os.Setenv("MYNET_CLUSTER_SERVE_ARGS", args)
}

// requireClusterMode skips t unless every host's mynet runs in cluster
// mode.
func requireClusterMode(t *testing.T) {
	t.Helper()
	requireCluster(t)
	if env.noCluster != "" {
		t.Skip(env.noCluster)
	}
}

// storeLeftovers lists the keys of networks, VNIs, cursors and claims left
// in etcd: after the scenarios (each removes its networks on every host)
// only the hosts' registrations may remain.
func storeLeftovers() []string {
	if env.noCluster != "" || len(env.hosts) == 0 {
		return nil
	}
	out, err := etcdctlErr(env.hosts[0], "get", clusterRoot+"/", "--prefix", "--keys-only")
	if err != nil {
		return []string{err.Error()}
	}
	var left []string
	for _, k := range strings.Fields(out) {
		if !strings.HasPrefix(k, clusterRoot+"/hosts/") && !strings.HasPrefix(k, clusterRoot+"/alive/") {
			left = append(left, "key "+k)
		}
	}
	return left
}

func etcdctlErr(h *host, args ...string) (string, error) {
	full := append([]string{"netns", "exec", h.netns, etcdctl, "--endpoints=" + env.etcd.endpoint,
		"--dial-timeout=2s", "--command-timeout=5s"}, args...)
	return runEnv([]string{"ETCDCTL_API=3"}, nil, "ip", full...)
}

// cnet is a cluster network, created on every host with the same spec.
type cnet struct {
	name   string // the Docker network's name and its cluster name
	subnet netip.Prefix
	ids    map[*host]string // each engine's network ID
}

// bridge is the network's bridge on h.
func (n *cnet) bridge(h *host) string { return "mn-" + n.ids[h][:12] }

// createOn runs `network create` for n's cluster network on h, with extra
// flags; it registers the removal.
func (n *cnet) createOn(t *testing.T, h *host, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"network", "create", "-d", "mynet", "--ipam-driver", "mynet",
		"--subnet", n.subnet.String(), "-o", "mynet.cluster=" + n.name}, extra...)
	out, err := h.dockerErr(append(args, n.name)...)
	if err == nil {
		n.ids[h] = out
		t.Cleanup(func() { removeNetwork(t, h, n.name) })
	}
	return out, err
}

// removeNetwork removes a network with its containers, for cleanups.
func removeNetwork(t *testing.T, h *host, name string) {
	if ids, err := h.dockerErr("ps", "-aq", "--filter", "network="+name); err == nil && ids != "" {
		_, _ = h.dockerErr(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	if out, err := h.dockerErr("network", "rm", name); err != nil && !strings.Contains(out, "not found") && !strings.Contains(out, "No such network") {
		t.Errorf("cleanup: host %s: %v", h.letter, err)
	}
}

// clusterNet creates the cluster network name on every host (a first, then
// the others: a joins, the others join it).
func clusterNet(t *testing.T, name, subnet string, extra ...string) *cnet {
	t.Helper()
	n := &cnet{name: name, subnet: netip.MustParsePrefix(subnet), ids: map[*host]string{}}
	for _, h := range env.hosts {
		if _, err := n.createOn(t, h, extra...); err != nil {
			t.Fatalf("host %s: %v", h.letter, err)
		}
	}
	return n
}

// record reads the network's record from etcd; ok is false when there is
// none.
func record(t *testing.T, name string) (rec model.ClusterNetwork, ok bool) {
	t.Helper()
	out := env.hosts[0].etcdctl(t, "get", "--print-value-only", clusterRoot+"/networks/"+name)
	if out == "" {
		return rec, false
	}
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("etcd record of network %s: %v: %s", name, err, out)
	}
	return rec, true
}

// vxlan is the VXLAN device of network name, from its VNI in etcd.
func vxlan(t *testing.T, name string) string {
	t.Helper()
	rec, ok := record(t, name)
	if !ok {
		t.Fatalf("cluster network %s has no record in etcd", name)
	}
	return model.VXLANName(rec.VNI)
}

// keys lists the etcd keys under prefix.
func keys(t *testing.T, prefix string) []string {
	t.Helper()
	return strings.Fields(env.hosts[0].etcdctl(t, "get", prefix, "--prefix", "--keys-only"))
}

// start runs a container on h (detached, removed at cleanup) with docker
// run options opts and image and command cmd (default: the test image
// sleeping), and returns its address and MAC on network.
func (h *host) start(t *testing.T, network, name string, opts []string, cmd ...string) (netip.Addr, string) {
	t.Helper()
	if len(cmd) == 0 {
		cmd = []string{testImage, "sleep", "600"}
	}
	args := append(append([]string{"run", "-d", "--name", name, "--net", network}, opts...), cmd...)
	t.Cleanup(func() { _, _ = h.dockerErr("rm", "-f", name) })
	h.docker(t, args...)
	return h.addr(t, network, name)
}

// addr returns ctr's address and MAC on network.
func (h *host) addr(t *testing.T, network, ctr string) (netip.Addr, string) {
	t.Helper()
	f := fmt.Sprintf(`{{with index .NetworkSettings.Networks %q}}{{.IPAddress}} {{.MacAddress}}{{end}}`, network)
	out := strings.Fields(h.docker(t, "inspect", "-f", f, ctr))
	if len(out) != 2 {
		t.Fatalf("host %s: container %s on %s: address and MAC %q", h.letter, ctr, network, out)
	}
	a, err := netip.ParseAddr(out[0])
	if err != nil {
		t.Fatalf("host %s: container %s: %v", h.letter, ctr, err)
	}
	return a, out[1]
}

// httpdArgs serves a page naming itself on port 80.
func httpdArgs(page string) []string {
	return []string{testImage, "sh", "-c",
		"mkdir -p /www && echo " + page + " >/www/index.html && exec httpd -f -p 80 -h /www"}
}

// ping pings to from ctr on h: nil if a reply came.
func (h *host) ping(ctr string, to netip.Addr) error {
	_, err := h.dockerErr("exec", ctr, "ping", "-c", "2", "-W", "2", to.String())
	return err
}

// pingBlocked is ping for a probe expected to fail: one echo, one second
// (an answer, when it comes, takes well under a millisecond here).
func (h *host) pingBlocked(ctr string, to netip.Addr) error {
	_, err := h.dockerErr("exec", ctr, "ping", "-c", "1", "-W", "1", to.String())
	return err
}

// httpGet fetches / of addr from ctr on h.
func (h *host) httpGet(ctr string, addr netip.Addr) (string, error) {
	return h.dockerErr("exec", ctr, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "+addr.String()+" 80")
}

// ns runs a command in h's network namespace (as the host's processes see
// it: ip netns exec gives it a sysfs of the namespace).
func (h *host) ns(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run("ip", append([]string{"netns", "exec", h.netns, name}, args...)...)
	if err != nil {
		t.Fatalf("host %s: %v", h.letter, err)
	}
	return out
}

// fdb is dev's FDB on h: MAC -> destination VTEP, for the permanent
// entries mynet programs.
func (h *host) fdb(t *testing.T, dev string) map[string]string {
	t.Helper()
	m := map[string]string{}
	// "02:42:0a:4d:00:02 dst 198.19.77.11 self permanent"
	for _, l := range strings.Split(h.ns(t, "bridge", "fdb", "show", "dev", dev), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "dst" && f[0] != "00:00:00:00:00:00" {
			m[f[0]] = f[2]
		}
	}
	return m
}

// neigh is dev's neighbour table on h: IP -> MAC.
func (h *host) neigh(t *testing.T, dev string) map[string]string {
	t.Helper()
	m := map[string]string{}
	// "10.77.0.2 lladdr 02:42:0a:4d:00:02 PERMANENT"
	for _, l := range strings.Split(h.ns(t, "ip", "neigh", "show", "dev", dev), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "lladdr" {
			m[f[0]] = f[2]
		}
	}
	return m
}

// hasEntry: h has the FDB entry MAC -> vtep and the neighbour entry
// ip -> MAC on dev.
func (h *host) hasEntry(t *testing.T, dev string, ip netip.Addr, mac, vtep string) bool {
	return h.fdb(t, dev)[mac] == vtep && h.neigh(t, dev)[ip.String()] == mac
}

// vtep is h's underlay address (scripts/cluster.sh: 198.19.77.1N).
func (h *host) vtep() string { return "198.19.77." + strconv.Itoa(11+int(h.letter[0]-'a')) }

// eventually polls cond every 100 ms until it holds or within passes; it
// returns how long that took and whether it held. The deadlines are
// functional ones (the issue's, or a generous bound on convergence), not
// speed assertions.
func eventually(within time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > within {
			return time.Since(start), false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metric reads one sample (summed over its labels) of h's mynet metrics.
func (h *host) metric(name string) (float64, error) {
	sock := filepath.Join(base, h.letter, "metrics.sock")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	r, err := c.Get("http://mynet/metrics")
	if err != nil {
		return 0, fmt.Errorf("host %s: metrics on %s (flag --metrics-socket): %w", h.letter, sock, err)
	}
	defer r.Body.Close()
	var v float64
	found := false
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+" ") && !strings.HasPrefix(l, name+"{") {
			continue
		}
		f := strings.Fields(l)
		x, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("host %s: metric line %q: %w", h.letter, l, err)
		}
		v, found = v+x, true
	}
	if !found {
		return 0, fmt.Errorf("host %s: no metric %s", h.letter, name)
	}
	return v, sc.Err()
}

// pidOf reads a PID the harness recorded ("PID STARTTIME").
func pidOf(t *testing.T, h *host, daemon string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(base, h.letter, daemon+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(raw))[0])
	if err != nil {
		t.Fatalf("host %s: %s.pid: %v", h.letter, daemon, err)
	}
	return pid
}

// parallel runs f(i) for i < n at once and waits.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// netLinks lists h's bridges and VXLAN devices (mn-*, mnx*), by name.
func netLinks(t *testing.T, h *host) []string {
	t.Helper()
	var names []string
	for _, l := range strings.Split(h.ns(t, "ip", "-o", "link", "show"), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
		if strings.HasPrefix(name, "mn-") || strings.HasPrefix(name, "mnx") {
			names = append(names, name)
		}
	}
	return names
}
