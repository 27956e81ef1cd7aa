package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// buildTimeout bounds scripts/build-plugin.sh: the first run on a machine
// debootstraps the base (about a minute), later ones reuse it.
const buildTimeout = 10 * time.Minute

// TestE2EManagedPlugin installs mynet the way Docker users install a network
// plugin: scripts/build-plugin.sh (what `make plugin` runs) creates
// mynet:<tag> from the Dockerfile and config.json without a registry, and
// `docker plugin enable` runs it in Docker's plugin sandbox (host network
// namespace, CAP_NET_ADMIN, read-only /proc/sys). Two containers on a network
// of it reach each other by name. They still do after the plugin is disabled
// and enabled again with the network in place, and a new container then gets
// an address of its own, so the state survived in the bind-mounted state
// directory. Finally everything is removed and nothing mynet-owned is left.
func TestE2EManagedPlugin(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	requireManagedPrerequisites(t)

	m := &managedPlugin{t: t, ref: "mynet:e2e-" + s.id}
	// A state directory of its own, so the test never touches the
	// /var/lib/mynet of a mynet the developer runs.
	stateDir := t.TempDir()
	// Registered after newScenario's cleanup, so this runs before its leak
	// check: containers and networks go before the plugin that serves them.
	t.Cleanup(func() {
		m.tryEnable() // a disabled driver cannot delete its networks
		s.removeAll()
		m.remove()
	})
	m.build()
	docker(t, "plugin", "set", m.ref, "state.source="+stateDir)
	m.enable()

	subnet := netip.MustParsePrefix("10.160.0.0/24")
	n := s.network("net", "-d", m.ref, "--ipam-driver", m.ref, "--subnet", subnet.String())
	m.expectOwnsBridge(n)
	a, b := s.container("a", n), s.container("b", n)
	s.expectAddresses(subnet, s.ips(n, a, b)...)
	s.expectPing(a, b)
	s.expectPing(b, a)

	start := time.Now()
	docker(t, "plugin", "disable", "-f", m.ref) // -f: the network holds a reference
	m.enable()
	t.Logf("timing: plugin disable and enable took %v", time.Since(start).Round(time.Millisecond))
	s.expectPing(a, b)
	c := s.container("c", n)
	// Distinct from a's and b's: the plugin restored its allocations.
	s.expectAddresses(subnet, s.ips(n, a, b, c)...)
	s.expectPing(c, a)
	s.expectPing(a, c)

	s.removeAll()
	if st, err := m.state(); err != nil {
		t.Errorf("state of %s after removing its network: %v", m.ref, err)
	} else if len(st.Networks)+len(st.Endpoints)+len(st.Pools) > 0 {
		t.Errorf("%s still has records after its network was removed: %+v", m.ref, st)
	}
	m.remove()
}

// requireManagedPrerequisites skips the test, or fails it where the suite
// must run, when the plugin cannot be built here or would disturb another
// mynet.
func requireManagedPrerequisites(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("debootstrap"); err != nil {
		skipUnlessRequired(t, "debootstrap not found: it builds the managed plugin's base (apt-get install debootstrap)")
	}
	// A managed plugin always runs as `mynet serve --name mynet` (config.json),
	// so its chains are the plain MYNET-* and its links are tagged
	// mynet:mynet:...; its startup reconcile would delete the objects of any
	// other instance of that name.
	if c, err := net.DialTimeout("unix", filepath.Join(pluginSocketDir, "mynet.sock"), time.Second); err == nil {
		c.Close()
		skipUnlessRequired(t, "a mynet daemon named mynet serves %s/mynet.sock; the managed plugin would take over its objects: stop it to run this test", pluginSocketDir)
	}
	ids := strings.Fields(docker(t, "plugin", "ls", "-q", "--filter", "enabled=true"))
	if len(ids) > 0 {
		out := docker(t, append([]string{"plugin", "inspect", "-f", "{{.Name}} {{.Config.Interface.Socket}}"}, ids...)...)
		for _, line := range strings.Split(out, "\n") {
			if name, sock, _ := strings.Cut(line, " "); sock == "mynet.sock" {
				skipUnlessRequired(t, "the managed plugin %s is enabled and runs as mynet too: disable it to run this test", name)
			}
		}
	}
}

// skipUnlessRequired skips with msg, or fails when CI=true or
// MYNET_E2E_REQUIRED=1 say that the suite must run in full.
func skipUnlessRequired(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" || os.Getenv("MYNET_E2E_REQUIRED") == "1" {
		t.Fatalf("%s (required: CI=true or MYNET_E2E_REQUIRED=1)", msg)
	}
	t.Skip(msg)
}

// managedPlugin is mynet installed as a Docker managed plugin under ref.
type managedPlugin struct {
	t   *testing.T
	ref string // mynet:<tag>
}

// build runs scripts/build-plugin.sh for m.ref with the binary under test,
// in a temporary plugin directory: `docker plugin create` copies it.
func (m *managedPlugin) build() {
	m.t.Helper()
	bin, err := pluginBinary()
	if err != nil {
		m.t.Fatal(err)
	}
	out, err := os.MkdirTemp("", "mynet-e2e-plugin-")
	if err != nil {
		m.t.Fatal(err)
	}
	defer os.RemoveAll(out)

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../scripts/build-plugin.sh") // go test runs in e2e/
	_, tag, _ := strings.Cut(m.ref, ":")
	cmd.Env = append(os.Environ(), "TAG="+tag, "PLUGIN=mynet", "MYNET_BIN="+bin, "OUT="+filepath.Join(out, "plugin"))
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	log, err := cmd.CombinedOutput()
	if err != nil {
		m.t.Fatalf("scripts/build-plugin.sh for %s: %v\n%s", m.ref, err, log)
	}
	m.t.Logf("timing: scripts/build-plugin.sh took %v", time.Since(start).Round(time.Millisecond))
}

// enable enables the plugin; Docker waits until its socket answers.
func (m *managedPlugin) enable() {
	m.t.Helper()
	if _, err := run("docker", "plugin", "enable", m.ref); err != nil {
		m.t.Fatalf("%v\nThe plugin's output is in dockerd's log, on lines with plugin=%s.", err, m.id())
	}
}

// tryEnable enables the plugin if it exists and is disabled, for cleanup.
func (m *managedPlugin) tryEnable() {
	if out, err := run("docker", "plugin", "inspect", "-f", "{{.Enabled}}", m.ref); err == nil && out == "false" {
		_, _ = run("docker", "plugin", "enable", m.ref)
	}
}

// remove force-removes the plugin, which disables it first; a plugin that
// is already gone is fine.
func (m *managedPlugin) remove() {
	m.t.Helper()
	if out, err := run("docker", "plugin", "rm", "-f", m.ref); err != nil && !strings.Contains(out, "not found") {
		m.t.Errorf("remove %s: %v", m.ref, err)
	}
}

func (m *managedPlugin) id() string {
	id, err := run("docker", "plugin", "inspect", "-f", "{{.Id}}", m.ref)
	if err != nil {
		return "<unknown: " + err.Error() + ">"
	}
	return id
}

// state asks the running plugin for its records. Docker bind-mounts the
// plugin's /run/docker/plugins from the host's /run/docker/plugins/<id>, so
// its socket is reachable at <id>/mynet.sock there.
func (m *managedPlugin) state() (pluginState, error) {
	return (&plugin{name: m.id() + "/mynet"}).state()
}

// expectOwnsBridge asserts that the managed plugin, as instance mynet, made
// network's bridge: a bridge carries the tag mynet:mynet:net:<network ID>.
func (m *managedPlugin) expectOwnsBridge(network string) {
	m.t.Helper()
	id := docker(m.t, "network", "inspect", "-f", "{{.Id}}", network)
	out, err := run("ip", "-d", "-o", "link", "show", "type", "bridge")
	if err != nil {
		m.t.Fatal(err)
	}
	// mynet:<instance>:<state generation>:net:<network ID>
	if want := regexp.MustCompile(`alias mynet:mynet:[0-9a-f]{8}:net:` + id + `\b`); !want.MatchString(out) {
		m.t.Errorf("no bridge of network %s has an alias matching %q:\n%s", network, want, out)
	}
}
