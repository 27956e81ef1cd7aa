package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// cmdTimeout bounds every command. The engine retries a plugin it cannot
// reach for about 15 s per lookup, so this leaves room for a few of those.
const cmdTimeout = 2 * time.Minute

// run runs a command and returns its combined output, trimmed. The error
// names the command and carries the full output.
func run(name string, args ...string) (string, error) {
	return runWithInput(nil, name, args...)
}

func runWithInput(stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	cmd.WaitDelay = 5 * time.Second // don't hang on pipes a killed child's children hold
	raw, err := cmd.CombinedOutput()
	out := strings.TrimSpace(string(raw))
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", cmdTimeout)
	}
	if err != nil {
		return out, fmt.Errorf("`%s`: %v\n%s", commandLine(name, args), err, out)
	}
	return out, nil
}

func commandLine(name string, args []string) string {
	words := []string{name}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$|;&<>*?") {
			a = strconv.Quote(a)
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// docker runs the docker CLI and fails the test, with the full output, if it
// fails.
func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run("docker", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// scenario tracks what one test creates, removes it when the test ends
// (containers first, then networks, even after a failure) and then checks
// that nothing mynet-owned was left on the host or in the plugin.
type scenario struct {
	t  *testing.T
	id string // shared by the names of everything this scenario creates

	networks   []string
	mu         sync.Mutex // guards containers, which may be started in parallel
	containers []string
}

// newScenario must be the first thing a scenario calls: its cleanup is
// registered first, so it runs last, after every other cleanup of the test
// (t.Cleanup is LIFO) has released what the leak check looks at.
func newScenario(t *testing.T) *scenario {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
	before, err := takeSnapshot(env.plugin)
	if err != nil {
		t.Fatalf("snapshot before the scenario: %v", err)
	}
	s := &scenario{t: t, id: randHex(3)}
	if env.plugin != nil {
		env.plugin.note("%s: start (resources named mne2e-%s-*)", t.Name(), s.id)
	}
	start := time.Now()
	t.Cleanup(func() {
		ran := time.Since(start)
		s.ensurePluginAlive()
		s.removeAll()
		s.checkLeaks(before)
		t.Logf("timing: %s ran %v, cleanup and leak check %v",
			t.Name(), ran.Round(time.Millisecond), (time.Since(start) - ran).Round(time.Millisecond))
		if env.plugin != nil {
			env.plugin.note("%s: end", t.Name())
			if t.Failed() {
				t.Logf("plugin log tail (%s):\n%s", env.plugin.logPath, env.plugin.logTail(40))
			}
		}
	})
	return s
}

// requirePlugin skips scenarios that test mynet itself rather than what any
// network driver must do.
func requirePlugin(t *testing.T) {
	t.Helper()
	if env.skip == "" && env.plugin == nil {
		t.Skip("needs the mynet plugin, not MYNET_E2E_DRIVER=bridge")
	}
}

// name returns a unique Docker object name that says which scenario and role
// it belongs to, e.g. mne2e-3fa9c1-web.
func (s *scenario) name(role string) string {
	return fmt.Sprintf("mne2e-%s-%s", s.id, role)
}

// network creates a network named after role with the given
// `docker network create` arguments and returns its name.
func (s *scenario) network(role string, args ...string) string {
	s.t.Helper()
	name := s.name(role)
	s.networks = append(s.networks, name)
	docker(s.t, append(append([]string{"network", "create"}, args...), name)...)
	return name
}

// mynetNetwork creates a network with the driver and IPAM under test and
// any further `docker network create` options. An empty subnet lets the IPAM
// driver choose one.
func (s *scenario) mynetNetwork(role, subnet string, opts ...string) string {
	s.t.Helper()
	args := []string{"-d", env.driver}
	if env.ipamDriver != "" {
		args = append(args, "--ipam-driver", env.ipamDriver)
	}
	if subnet != "" {
		args = append(args, "--subnet", subnet)
	}
	return s.network(role, append(args, opts...)...)
}

// trackContainer returns the name of a container for role and registers it
// for removal before it is created: `docker run` can fail after creating it.
func (s *scenario) trackContainer(role string) string {
	name := s.name(role)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.containers = append(s.containers, name)
	return name
}

// runArgs returns the `docker run` arguments that start a detached container
// named name on network. Without a command it just sleeps. Every run has
// --pull=never: no registry is reachable, and a newer engine would otherwise
// try one before failing on a missing image.
func runArgs(name, network string, cmd ...string) []string {
	if len(cmd) == 0 {
		cmd = []string{"sleep", "3600"}
	}
	return append([]string{"run", "-d", "--pull=never", "--name", name, "--net", network, testImage}, cmd...)
}

// container starts a detached container and returns its name.
func (s *scenario) container(role, network string, cmd ...string) string {
	s.t.Helper()
	name := s.trackContainer(role)
	docker(s.t, runArgs(name, network, cmd...)...)
	return name
}

// start starts a detached container with `docker run` options of its own
// (--net, -p, --ip, --cap-add ...) and returns its name. Without a command
// it just sleeps.
func (s *scenario) start(role string, opts []string, cmd ...string) string {
	s.t.Helper()
	name, _, err := s.tryStart(role, opts, cmd...)
	if err != nil {
		s.t.Fatal(err)
	}
	return name
}

// tryStart is start for a run that may fail; it also returns docker's
// output. docker run creates the container even when it fails to start it;
// it is removed with the others.
func (s *scenario) tryStart(role string, opts []string, cmd ...string) (name, out string, err error) {
	name = s.trackContainer(role)
	if len(cmd) == 0 {
		cmd = []string{"sleep", "3600"}
	}
	args := append(append([]string{"run", "-d", "--pull=never", "--name", name}, opts...), testImage)
	if out, err = run("docker", append(args, cmd...)...); err != nil {
		return name, out, err
	}
	return name, out, waitListening(name, httpdPorts(cmd))
}

var httpdPort = regexp.MustCompile(`\bhttpd\b[^&;|]*?-p (\d+)`)

// httpdPorts are the ports the httpd servers of a container's command
// listen on.
func httpdPorts(cmd []string) []uint16 {
	var ports []uint16
	for _, m := range httpdPort.FindAllStringSubmatch(strings.Join(cmd, " "), -1) {
		p, _ := strconv.ParseUint(m[1], 10, 16)
		ports = append(ports, uint16(p))
	}
	return ports
}

// waitListening waits until a container listens on each TCP port.
// docker run -d returns when the process has started, not when its
// server listens: a request in between is refused by the container
// itself, which looks just like a missing DNAT (seen on a loaded machine
// in TestE2EDirectRouting, whose container starts two servers).
func waitListening(container string, ports []uint16) error {
	if len(ports) == 0 {
		return nil
	}
	var missing []uint16
	_, err := eventually(15*time.Second, func() error {
		out, err := run("docker", "exec", container, "cat", "/proc/net/tcp", "/proc/net/tcp6")
		if err != nil {
			return err
		}
		missing = missing[:0]
		for _, p := range ports {
			// local_address ...:PORT (hex) with st 0A, LISTEN
			if !regexp.MustCompile(fmt.Sprintf(`:%04X [0-9A-F:]+ 0A `, p)).MatchString(out) {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not listening on %v", missing)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("container %s: %w after 15s", container, err)
	}
	return nil
}

// httpd is the command of a container serving the test image's page on
// port.
func httpd(port int) []string {
	return []string{"httpd", "-f", "-p", strconv.Itoa(port), "-h", "/"}
}

// runOnce runs cmd in a new container with --net=mode and returns its
// output. The container is named and tracked so that a hung one is removed.
func (s *scenario) runOnce(role, mode string, cmd ...string) string {
	s.t.Helper()
	name := s.trackContainer(role)
	return docker(s.t, append([]string{"run", "--rm", "--pull=never", "--name", name, "--net", mode, testImage}, cmd...)...)
}

func (s *scenario) exec(container string, cmd ...string) string {
	s.t.Helper()
	return docker(s.t, append([]string{"exec", container}, cmd...)...)
}

// removeAll force-removes the scenario's containers, then its networks,
// ignoring objects that were never created.
func (s *scenario) removeAll() {
	if len(s.containers) > 0 {
		// rm -f succeeds for names that do not exist.
		if _, err := run("docker", append([]string{"rm", "-f"}, s.containers...)...); err != nil {
			s.t.Errorf("cleanup: %v", err)
		}
	}
	if len(s.networks) > 0 {
		out, err := run("docker", append([]string{"network", "rm"}, s.networks...)...)
		if err != nil && !onlyNotFound(out) {
			s.t.Errorf("cleanup: %v", err)
		}
	}
}

// onlyNotFound reports whether every error line of `docker network rm` is
// about a network that does not exist (creation failed or never happened).
func onlyNotFound(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Error") && !strings.HasSuffix(line, " not found") {
			return false
		}
	}
	return true
}

// ensurePluginAlive catches a plugin that died during the scenario: that is
// a failure of this scenario, and the next ones need a running plugin.
func (s *scenario) ensurePluginAlive() {
	p := env.plugin
	if p == nil || p.running() {
		return
	}
	s.t.Errorf("the plugin exited during the scenario (%v); log tail:\n%s", p.waitErr, p.logTail(40))
	if err := p.restart(); err != nil {
		s.t.Errorf("restarting the plugin: %v", err)
	}
}

// ip returns container's IPv4 address on network.
func (s *scenario) ip(container, network string) netip.Addr {
	s.t.Helper()
	return s.ips(network, container)[0]
}

// ip6 returns container's global IPv6 address on network.
func (s *scenario) ip6(container, network string) netip.Addr {
	s.t.Helper()
	format := fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}`, network)
	out := docker(s.t, "inspect", "-f", format, container)
	a, err := netip.ParseAddr(out)
	if err != nil || !a.Is6() {
		s.t.Fatalf("IPv6 address of %s on %s: %q (%v)", container, network, out, err)
	}
	return a
}

// endpointID returns the ID of container's endpoint on network.
func (s *scenario) endpointID(container, network string) string {
	s.t.Helper()
	format := fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}}`, network)
	return docker(s.t, "inspect", "-f", format, container)
}

// ips returns the containers' IPv4 addresses on network, in order.
func (s *scenario) ips(network string, containers ...string) []netip.Addr {
	s.t.Helper()
	format := fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network)
	out := strings.Fields(docker(s.t, append([]string{"inspect", "-f", format}, containers...)...))
	if len(out) != len(containers) {
		s.t.Fatalf("addresses of %q on %s: got %q", containers, network, out)
	}
	addrs := make([]netip.Addr, len(out))
	for i, a := range out {
		var err error
		if addrs[i], err = netip.ParseAddr(a); err != nil {
			s.t.Fatalf("address of %s on %s: %v", containers[i], network, err)
		}
	}
	return addrs
}

// gateway returns the address a network uses as gateway by default: the
// first one after the subnet's own.
func gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// expectAddresses asserts that addrs are distinct container addresses of
// subnet: inside it and not its gateway.
func (s *scenario) expectAddresses(subnet netip.Prefix, addrs ...netip.Addr) {
	s.t.Helper()
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		switch {
		case !subnet.Contains(a):
			s.t.Errorf("address %s is outside the subnet %s", a, subnet)
		case a == gateway(subnet):
			s.t.Errorf("address %s is the gateway's", a)
		case seen[a]:
			s.t.Errorf("address %s was handed out twice (all: %v)", a, addrs)
		}
		seen[a] = true
	}
}

// subnet returns network's (single) IPv4 subnet as Docker recorded it.
func (s *scenario) subnet(network string) netip.Prefix {
	s.t.Helper()
	out := docker(s.t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network)
	p, err := netip.ParsePrefix(out)
	if err != nil {
		s.t.Fatalf("subnet of %s: %q: %v", network, out, err)
	}
	return p
}

// Where runIn runs commands, besides a container given by its name.
const (
	hostNS     = "<host>" // the host itself
	netnsPlace = "netns:" // followed by a network namespace's name: see remoteHost.where
)

// runIn runs a busybox applet with args in from (a container, hostNS or
// netnsPlace+name). The host has no ping or nc of its own, so busybox runs
// there too.
func runIn(from string, stdin io.Reader, args ...string) (string, error) {
	switch {
	case from == hostNS:
		return runWithInput(stdin, "busybox", args...)
	case strings.HasPrefix(from, netnsPlace):
		return runWithInput(stdin, "ip", append([]string{"netns", "exec", strings.TrimPrefix(from, netnsPlace), "busybox"}, args...)...)
	case stdin != nil:
		return runWithInput(stdin, "docker", append([]string{"exec", "-i", from}, args...)...)
	default:
		return run("docker", append([]string{"exec", from}, args...)...)
	}
}

// ping sends one echo request from a container (or hostNS) to target, an
// IPv4 or IPv6 address or a name, and returns the output and whether a
// reply came within wait seconds.
func (s *scenario) ping(from, target string, wait int) (string, bool) {
	out, err := runIn(from, nil, "ping", "-c", "1", "-W", strconv.Itoa(wait), target)
	return out, err == nil
}

func (s *scenario) expectPing(from, target string) {
	s.t.Helper()
	if out, ok := s.ping(from, target, 2); !ok {
		s.t.Errorf("ping from %s to %s failed, want a reply:\n%s", from, target, out)
	}
}

// expectNoPing asserts that the request went out and nothing came back; a
// ping that could not even run (say, the container is gone) is an error,
// not isolation.
func (s *scenario) expectNoPing(from, target string) {
	s.t.Helper()
	out, ok := s.ping(from, target, 1)
	switch {
	case ok:
		s.t.Errorf("ping from %s to %s got a reply, want none:\n%s", from, target, out)
	case !strings.Contains(out, "1 packets transmitted, 0 packets received"):
		s.t.Errorf("ping from %s to %s failed without sending a request:\n%s", from, target, out)
	}
}

// httpRequest is what get sends; httpd answers it and closes.
const httpRequest = "GET / HTTP/1.0\r\n\r\n"

// get sends GET / to target from `from` (see runIn) with busybox nc, which
// gives up on connecting or reading after wait seconds.
func get(from string, target netip.AddrPort, wait int) (string, error) {
	return runIn(from, strings.NewReader(httpRequest),
		"nc", "-w", strconv.Itoa(wait), target.Addr().String(), strconv.Itoa(int(target.Port())))
}

// isPage reports whether an HTTP response is the test image's page.
func isPage(resp string) bool {
	return strings.Contains(resp, "200 OK") && strings.Contains(resp, strings.TrimSpace(httpdPage))
}

// expectPage asserts that GET http://target/ from `from` returns the test
// image's page. No other server on the way could send that page.
func (s *scenario) expectPage(from string, target netip.AddrPort) {
	s.t.Helper()
	if out, err := get(from, target, 3); err != nil || !isPage(out) {
		s.t.Errorf("GET http://%s/ from %s: want 200 and the test page, got (%v):\n%s", target, from, err, out)
	}
}

// connectFailures are busybox nc's words for a connection that did not
// happen; anything else (say, "not found") means nc could not even try.
var connectFailures = []string{"Connection refused", "timed out", "No route to host", "Network is unreachable"}

// expectNoConnection asserts that a TCP connection from `from` to target is
// refused or unanswered within 2 seconds. It returns nc's output, which
// tells refused from timed out.
func (s *scenario) expectNoConnection(from string, target netip.AddrPort) string {
	s.t.Helper()
	out, err := get(from, target, 2)
	switch {
	case err == nil || isPage(out):
		s.t.Errorf("GET http://%s/ from %s connected, want no connection:\n%s", target, from, out)
	case !slices.ContainsFunc(connectFailures, func(f string) bool { return strings.Contains(out, f) }):
		s.t.Errorf("GET http://%s/ from %s failed without trying to connect: %v", target, from, err)
	}
	return out
}

// expectOnlyEth0 asserts that container has exactly one interface besides
// lo, named eth0, and a single default route via gateway.
func (s *scenario) expectOnlyEth0(container string, gateway netip.Addr) {
	s.t.Helper()
	if links := linkNames(s.exec(container, "ip", "-o", "link")); !slices.Equal(links, []string{"lo", "eth0"}) {
		s.t.Errorf("%s has links %q, want lo and eth0", container, links)
	}
	routes := s.exec(container, "ip", "route")
	var defaults []string
	for _, line := range strings.Split(routes, "\n") {
		if strings.HasPrefix(line, "default ") {
			defaults = append(defaults, line)
		}
	}
	want := "default via " + gateway.String() + " dev eth0"
	if len(defaults) != 1 || !strings.HasPrefix(defaults[0], want) {
		s.t.Errorf("%s: default routes %q, want one %q; routes:\n%s", container, defaults, want, routes)
	}
}

// linkNames returns the interface names in `ip -o link` output, without the
// @peer suffix of veths.
func linkNames(out string) []string {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(fields[1], ":"), "@")
		names = append(names, name)
	}
	return names
}

type ifAddr struct {
	link   string
	prefix netip.Prefix
}

// parseAddrs reads `ip -o addr` output.
func parseAddrs(out string) []ifAddr {
	var addrs []ifAddr
	for _, line := range strings.Split(out, "\n") {
		// 5: mn-0123456789ab    inet 10.127.1.1/24 brd 10.127.1.255 scope global ...
		fields := strings.Fields(line)
		if len(fields) < 4 || (fields[2] != "inet" && fields[2] != "inet6") {
			continue
		}
		if p, err := netip.ParsePrefix(fields[3]); err == nil {
			addrs = append(addrs, ifAddr{link: fields[1], prefix: p})
		}
	}
	return addrs
}
