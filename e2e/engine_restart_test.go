package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Restarts of the engine (issue 4; protocol.md section 5). dockerd never
// replays CreateNetwork or Join to a plugin, and a legacy (v1) plugin gets
// no DeleteEndpoint for containers that died with the engine: only the IPAM
// ReleaseAddress of their endpoints is attempted. mynet must come out of
// every restart with the containers working and nothing leaked.
//
// The tests of this file use 10.151.1.0/24 to 10.151.3.0/24 and
// 10.151.10.0/24, and host port 18090.

// engineRestartPort is the host port the restarted web container publishes.
const engineRestartPort = 18090

// TestE2EEngineRestart: containers with --restart=always on two mynet
// networks, one publishing a port, survive a graceful restart (SIGTERM) of
// dockerd, a kill -9 of it, and a kill -9 with the containers dying too.
// After each, they run again and reach each other by name, the published
// port answers at a host address that is not loopback (from the host and
// from a remote host), and the plugin holds exactly one endpoint and one
// address per live container, plus the gateways: the endpoints of the
// containers that died are dropped and their addresses released. At the
// end, the freed addresses can all be handed out again.
//
// A network with mynet's IPAM makes the restarted engine load the plugin
// (for its pools) before it cleans up dead sandboxes, so here mynet does get
// DeleteEndpoint; TestE2EEngineCrashDockerIPAM covers the case where it
// does not.
func TestE2EEngineRestart(t *testing.T) {
	s := newScenario(t)
	e := takeEngine(t, s)
	if e.liveRestore {
		engineSkip(t, "the engine runs with live-restore, so its containers do not die with it; this test needs them to")
	}
	remote := newRemoteHost(t)
	// Four addresses for containers (10.151.1.4-7; the gateway is .1): the
	// closing check fills them, which fails if one of them leaked.
	const rangeSize = 4
	netA := s.mynetNetwork("a", "10.151.1.0/24", "--ip-range", "10.151.1.4/30")
	netB := s.mynetNetwork("b", "10.151.10.0/24")
	// --stop-timeout: busybox as PID 1 ignores SIGTERM, and dockerd would
	// wait the default 10 s for each on its way down.
	always := []string{"--restart=always", "--stop-timeout=1"}
	web := s.start("web", append([]string{"--net", netA, "-p", strconv.Itoa(engineRestartPort) + ":80"}, always...), httpd(80)...)
	client := s.start("client", append([]string{"--net", netA}, always...))
	solo := s.start("solo", append([]string{"--net", netB}, always...))
	members := map[string][]string{netA: {web, client}, netB: {solo}}
	published := netip.AddrPortFrom(remote.hostAddr, engineRestartPort)

	before := -1
	check := func(phase string) {
		t.Helper()
		start := time.Now()
		s.waitRunning(phase, 30*time.Second, web, client, solo)
		s.expectPingSoon(phase, client, web)
		s.expectPingSoon(phase, web, client)
		s.expectPingSoon(phase, hostNS, s.ip(solo, netB).String())
		for _, from := range []string{hostNS, remote.where()} {
			s.expectPageSoon(phase, from, published)
		}
		_, allocated := s.expectPluginState(phase, 15*time.Second, members)
		switch {
		case before < 0:
			before = allocated
		case allocated >= 0 && allocated != before:
			t.Errorf("%s: the plugin holds %d addresses, %d before the restarts (gateways plus live containers)", phase, allocated, before)
		}
		t.Logf("%s: containers, connectivity and plugin state checked in %v", phase, time.Since(start).Round(time.Millisecond))
	}

	check("before the restarts")
	for _, phase := range []struct {
		name string
		sig  syscall.Signal
		// die: the containers die while dockerd is down, as in a crash
		// of the host's container runtime; otherwise dockerd finds them
		// running and stops them itself (no live-restore).
		die bool
	}{
		{"graceful restart (SIGTERM)", syscall.SIGTERM, false},
		{"kill -9 of dockerd", syscall.SIGKILL, false},
		{"kill -9 of dockerd, the containers dying with it", syscall.SIGKILL, true},
	} {
		env.plugin.note("%s: %s", t.Name(), phase.name)
		dead := s.endpointIDs(members)
		logStart := env.plugin.logSize()
		if phase.die {
			e.crash(web, client, solo)
		} else if err := e.stop(phase.sig); err != nil {
			t.Fatal(err)
		}
		if err := e.start(); err != nil {
			t.Fatal(err)
		}
		check("after " + phase.name)
		s.logDeletes("after "+phase.name, dead, logStart)
	}

	// Every address the dead containers held is free again: the rest of the
	// range can be filled, and then it is full (a positive control that the
	// range is as small as assumed).
	for i := range rangeSize - len(members[netA]) {
		s.start(fmt.Sprintf("fill%d", i), []string{"--net", netA})
	}
	_, out, err := s.tryStart("overflow", []string{"--net", netA})
	if err == nil {
		t.Errorf("a container beyond the %d addresses of %s's --ip-range started; the range check above proves nothing", rangeSize, netA)
	} else if !strings.Contains(out, "no free address") {
		t.Errorf("a container beyond the range of %s failed, but not for want of an address: %v", netA, err)
	}
}

// TestE2EEngineCrashDockerIPAM: the case protocol.md section 5 warns of.
// With Docker's own IPAM on every mynet network, nothing makes the restarted
// engine load the (v1) plugin before it cleans up the sandboxes of
// containers that died with it, so mynet gets no Leave or DeleteEndpoint
// for them: their veths vanish with their namespaces, and mynet's reconcile
// must drop the endpoints, their rules and the host port one of them
// published, which the restarted container asks for again.
func TestE2EEngineCrashDockerIPAM(t *testing.T) {
	s := newScenario(t)
	e := takeEngine(t, s)
	if e.liveRestore {
		engineSkip(t, "the engine runs with live-restore, so its containers do not die with it; this test needs them to")
	}
	remote := newRemoteHost(t)
	n := s.network("net", "-d", env.driver, "--subnet", "10.151.3.0/24")
	always := []string{"--net", n, "--restart=always", "--stop-timeout=1"}
	web := s.start("web", append([]string{"-p", strconv.Itoa(engineRestartPort) + ":80"}, always...), httpd(80)...)
	client := s.start("client", always)
	members := map[string][]string{n: {web, client}}
	published := netip.AddrPortFrom(remote.hostAddr, engineRestartPort)
	s.expectPageSoon("before the crash", remote.where(), published)
	s.expectPluginState("before the crash", 10*time.Second, members)

	env.plugin.note("%s: kill -9 of dockerd, the containers dying with it", t.Name())
	dead := s.endpointIDs(members)
	logStart := env.plugin.logSize()
	e.crash(web, client)
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	phase := "after the crash"
	s.waitRunning(phase, 30*time.Second, web, client)
	s.expectPingSoon(phase, client, web)
	s.expectPingSoon(phase, web, client)
	for _, from := range []string{hostNS, remote.where()} {
		s.expectPageSoon(phase, from, published)
	}
	s.expectPluginState(phase, 15*time.Second, members)
	s.logDeletes(phase, dead, logStart)
}

// TestE2EEngineLiveRestore: with live-restore, kill -9 of dockerd leaves the
// running containers connected (checked from inside their namespaces while
// the engine is down); once it is back they still reach each other, and a
// new container works and gets an address of its own.
func TestE2EEngineLiveRestore(t *testing.T) {
	s := newScenario(t)
	e := takeEngine(t, s)
	var flags []string
	if !e.liveRestore {
		flags = []string{"--live-restore"}
		e.restart(syscall.SIGTERM, flags...)
	}
	subnet := netip.MustParsePrefix("10.151.2.0/24")
	n := s.mynetNetwork("net", subnet.String())
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)
	pids := strings.Fields(docker(t, "inspect", "-f", "{{.State.Pid}}", a, b))
	if len(pids) != 2 {
		t.Fatalf("pids of %s and %s: %q", a, b, pids)
	}
	s.expectPluginState("before the kill", 10*time.Second, map[string][]string{n: {a, b}})

	env.plugin.note("%s: killing dockerd (live-restore)", t.Name())
	if err := e.stop(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if engineAnswers() {
		t.Fatal("the engine still answers after kill -9 of dockerd")
	}
	for i, pid := range pids {
		peer := addrs[1-i].String()
		if out, err := run("nsenter", "-t", pid, "-n", "busybox", "ping", "-c", "1", "-W", "2", peer); err != nil {
			t.Errorf("with dockerd down, ping from the namespace of pid %s (%s) to %s failed: %v", pid, []string{a, b}[i], peer, out)
		}
	}

	if err := e.start(flags...); err != nil {
		t.Fatal(err)
	}
	s.waitRunning("after dockerd came back", 30*time.Second, a, b)
	if now := strings.Fields(docker(t, "inspect", "-f", "{{.State.Pid}}", a, b)); !slices.Equal(now, pids) {
		t.Errorf("after live-restore the containers have pids %q, want %q (they were restarted, not restored)", now, pids)
	}
	s.expectPing(a, addrs[1].String())
	s.expectPing(b, addrs[0].String())
	s.expectPing(a, b) // by name: the embedded DNS came back too

	c := s.container("c", n)
	addrC := s.ip(c, n)
	s.expectAddresses(subnet, addrs[0], addrs[1], addrC)
	s.expectPing(c, a)
	s.expectPing(b, addrC.String())
	s.expectPluginState("after dockerd came back", 10*time.Second, map[string][]string{n: {a, b, c}})
}

// crash kills dockerd with SIGKILL and, while it is down, the containers'
// processes, and waits until they are gone: they died with the engine, which
// finds only their remains when it starts again.
func (e *engine) crash(containers ...string) {
	e.t.Helper()
	pids := strings.Fields(docker(e.t, append([]string{"inspect", "-f", "{{.State.Pid}}"}, containers...)...))
	if err := e.stop(syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	for _, p := range pids {
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 1 {
			e.t.Fatalf("pids of %q: %q", containers, pids)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			e.t.Fatalf("killing pid %d: %v", pid, err)
		}
	}
	for _, p := range pids {
		pid, _ := strconv.Atoi(p)
		if _, err := eventually(10*time.Second, func() error {
			if alive(pid) {
				return fmt.Errorf("container process %d still alive", pid)
			}
			return nil
		}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// endpointIDs returns the endpoint IDs the engine reports for the containers
// of each network.
func (s *scenario) endpointIDs(members map[string][]string) []string {
	s.t.Helper()
	var ids []string
	for network, containers := range members {
		atts, err := s.attachments(network, containers)
		if err != nil {
			s.t.Fatal(err)
		}
		ids = append(ids, slices.Collect(maps.Keys(atts))...)
	}
	return ids
}

// logDeletes logs for how many of the endpoints the plugin received a
// DeleteEndpoint since its log had logStart bytes: the engine sends it only
// when it has loaded the plugin before it cleans up (protocol.md section
// 5); the others had to be dropped by the plugin's reconcile.
func (s *scenario) logDeletes(phase string, endpoints []string, logStart int64) {
	log := env.plugin.logSince(logStart)
	var told []string
	for _, id := range endpoints {
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "op=NetworkDriver.DeleteEndpoint") && strings.Contains(line, "endpoint_id="+id[:12]) {
				told = append(told, id[:12])
				break
			}
		}
	}
	s.t.Logf("%s: the engine sent DeleteEndpoint for %d of the %d endpoints of the dead containers %v; the plugin had to drop %d on its own",
		phase, len(told), len(endpoints), told, len(endpoints)-len(told))
}

// logSize is the current length of the plugin log.
func (p *plugin) logSize() int64 {
	fi, err := os.Stat(p.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the plugin log from byte offset on.
func (p *plugin) logSince(offset int64) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil || int64(len(data)) < offset {
		return ""
	}
	return string(data[offset:])
}

// waitRunning waits until the containers run (the engine restarts those with
// a restart policy after its own start) and fails the test if they do not.
func (s *scenario) waitRunning(phase string, timeout time.Duration, containers ...string) {
	s.t.Helper()
	format := "{{.Name}} running={{.State.Running}} restarting={{.State.Restarting}} exit={{.State.ExitCode}} error={{.State.Error}}"
	var out string
	_, err := eventually(timeout, func() error {
		var err error
		if out, err = run("docker", append([]string{"inspect", "-f", format}, containers...)...); err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if !strings.Contains(line, " running=true restarting=false ") {
				return errors.New(line)
			}
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("%s: containers not running after %v: %v\n%s", phase, timeout, err, out)
	}
}

// expectPingSoon is expectPing with a few seconds of grace for a container
// that has only just started.
func (s *scenario) expectPingSoon(phase, from, target string) {
	s.t.Helper()
	var out string
	if _, err := eventually(10*time.Second, func() error {
		var ok bool
		if out, ok = s.ping(from, target, 2); !ok {
			return errors.New("no reply")
		}
		return nil
	}); err != nil {
		s.t.Errorf("%s: ping from %s to %s failed for 10s, want a reply:\n%s", phase, from, target, out)
	}
}

// expectPageSoon is expectPage with the same grace.
func (s *scenario) expectPageSoon(phase, from string, target netip.AddrPort) {
	s.t.Helper()
	var out string
	if _, err := eventually(10*time.Second, func() error {
		var err error
		if out, err = get(from, target, 2); err == nil && !isPage(out) {
			err = errors.New("not the test page")
		}
		return err
	}); err != nil {
		s.t.Errorf("%s: GET http://%s/ from %s: want 200 and the test page for 10s, got (%v):\n%s", phase, target, from, err, out)
	}
}

// eventually calls check until it succeeds or timeout passes, and returns
// how long that took and check's last error.
func eventually(timeout time.Duration, check func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := check()
		if err == nil || time.Since(start) > timeout {
			return time.Since(start), err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// The plugin's records, as /Mynet.State reports them.
type (
	stateEndpoint struct{ ID, NetworkID, HostVeth, IPv4 string }
	statePool     struct {
		ID, Pool, Gateway, NetworkID string
		// Addrs are the allocations, gateway included; nil when the
		// dump does not list them.
		Addrs *[]string
	}
	stateView struct {
		endpoints []stateEndpoint
		pools     []statePool
	}
)

func readState(p *plugin) (stateView, error) {
	st, err := p.state()
	if err != nil {
		return stateView{}, err
	}
	var v stateView
	for _, raw := range st.Endpoints {
		var ep stateEndpoint
		if err := json.Unmarshal(raw, &ep); err != nil {
			return v, fmt.Errorf("endpoint record %s: %w", raw, err)
		}
		v.endpoints = append(v.endpoints, ep)
	}
	for _, raw := range st.Pools {
		var pool statePool
		if err := json.Unmarshal(raw, &pool); err != nil {
			return v, fmt.Errorf("pool record %s: %w", raw, err)
		}
		v.pools = append(v.pools, pool)
	}
	return v, nil
}

// containerAttachment is what the engine says of a container on a network.
type containerAttachment struct {
	endpointID string
	addr       netip.Addr
}

// attachments returns the endpoint ID and address of each container on
// network, keyed by endpoint ID.
func (s *scenario) attachments(network string, containers []string) (map[string]containerAttachment, error) {
	format := fmt.Sprintf(`{{with index .NetworkSettings.Networks %q}}{{.EndpointID}} {{.IPAddress}}{{end}}`, network)
	out, err := run("docker", append([]string{"inspect", "-f", format}, containers...)...)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(out, "\n")
	if len(lines) != len(containers) {
		return nil, fmt.Errorf("attachments of %q to %s: %q", containers, network, out)
	}
	atts := map[string]containerAttachment{}
	for i, line := range lines {
		id, addr, _ := strings.Cut(line, " ")
		a, err := netip.ParseAddr(addr)
		if err != nil || id == "" {
			return nil, fmt.Errorf("%s on %s: endpoint %q, address %q", containers[i], network, id, addr)
		}
		atts[id] = containerAttachment{endpointID: id, addr: a}
	}
	return atts, nil
}

// endpointRule matches the comment on the plugin's rules of one endpoint
// (published ports, anti-spoofing).
var endpointRule = regexp.MustCompile(`mynet net=([0-9a-f]{64}) ep=([0-9a-f]{64})`)

// pluginStateMismatch compares the plugin's records of the given networks
// (network name -> its live containers) with what the engine reports: one
// endpoint per live container and nothing else, its host veth present and
// no other veth of the plugin, no rule of any other endpoint on those
// networks, and each pool holding exactly the gateway and the containers'
// addresses. allocated is the number of addresses held in those pools, -1
// when the dump does not list allocations.
func (s *scenario) pluginStateMismatch(members map[string][]string) (allocated int, problems []string, err error) {
	st, err := readState(env.plugin)
	if err != nil {
		return -1, nil, err
	}
	wantEps := map[string]containerAttachment{}
	wantAddrs := map[string][]string{} // by network ID
	netIDs := map[string]string{}      // network ID -> name
	for network, containers := range members {
		id, err := run("docker", "network", "inspect", "-f", "{{.Id}}", network)
		if err != nil {
			return -1, nil, err
		}
		netIDs[id] = network
		atts, err := s.attachments(network, containers)
		if err != nil {
			return -1, nil, err
		}
		maps.Copy(wantEps, atts)
		for _, att := range atts {
			wantAddrs[id] = append(wantAddrs[id], att.addr.String())
		}
	}

	live := map[string]bool{}
	for id := range wantEps {
		live[id] = true
	}
	gotVeths := map[string]bool{}
	for _, ep := range st.endpoints {
		if _, ours := netIDs[ep.NetworkID]; !ours {
			continue
		}
		gotVeths[ep.HostVeth] = true
		if want, ok := wantEps[ep.ID]; !ok {
			problems = append(problems, fmt.Sprintf("stale endpoint %.12s (%s, veth %s) on %s: no live container has it",
				ep.ID, ep.IPv4, ep.HostVeth, netIDs[ep.NetworkID]))
		} else if addr, _, _ := strings.Cut(ep.IPv4, "/"); addr != want.addr.String() {
			problems = append(problems, fmt.Sprintf("endpoint %.12s has address %s in the plugin, %s in the engine", ep.ID, ep.IPv4, want.addr))
		}
		delete(wantEps, ep.ID)
	}
	for id, att := range wantEps {
		problems = append(problems, fmt.Sprintf("endpoint %.12s (%s) of a live container is missing from the plugin's state", id, att.addr))
	}
	links, err := run("ip", "-o", "link")
	if err != nil {
		return -1, nil, err
	}
	for _, line := range strings.Split(links, "\n") {
		if name := linkNames(line); len(name) == 1 && strings.HasPrefix(name[0], "mnv") && !foreignLink(line) && !gotVeths[name[0]] {
			problems = append(problems, "host veth "+name[0]+" of no recorded endpoint")
		}
	}

	sets, err := rulesets()
	if err != nil {
		return -1, nil, err
	}
	for tool, out := range sets {
		for _, line := range strings.Split(out, "\n") {
			if m := endpointRule.FindStringSubmatch(line); m != nil && netIDs[m[1]] != "" && !live[m[2]] {
				problems = append(problems, fmt.Sprintf("%s: a rule of endpoint %.12s, of no live container: %s", tool, m[2], line))
			}
		}
	}

	allocated = 0
	for _, pool := range st.pools {
		network, ours := netIDs[pool.NetworkID]
		if !ours {
			continue
		}
		if pool.Addrs == nil {
			allocated = -1
			continue
		}
		want := append([]string{pool.Gateway}, wantAddrs[pool.NetworkID]...)
		got := slices.Clone(*pool.Addrs)
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			problems = append(problems, fmt.Sprintf("pool %s of %s holds %v, want the gateway and the live containers' %v", pool.ID, network, got, want))
		}
		if allocated >= 0 {
			allocated += len(got)
		}
	}
	return allocated, problems, nil
}

// expectPluginState waits up to timeout for pluginStateMismatch to find
// nothing (the plugin's reconcile drops endpoints whose veth vanished every
// 5 s) and fails the test with what is left otherwise. It returns how long
// that took and the number of addresses allocated (-1: unknown).
func (s *scenario) expectPluginState(phase string, timeout time.Duration, members map[string][]string) (time.Duration, int) {
	s.t.Helper()
	var allocated int
	var problems []string
	took, err := eventually(timeout, func() error {
		var err error
		if allocated, problems, err = s.pluginStateMismatch(members); err != nil {
			return err
		}
		if len(problems) > 0 {
			return errors.New("mismatch")
		}
		return nil
	})
	switch {
	case len(problems) > 0:
		s.t.Errorf("%s: the plugin's state does not match the live containers after %v:%s", phase, timeout, bullets(problems))
	case err != nil:
		s.t.Errorf("%s: plugin state: %v", phase, err)
	default:
		s.t.Logf("%s: the plugin's endpoints, veths and pools match the live containers (after %v)", phase, took.Round(time.Millisecond))
	}
	if allocated < 0 && !noAllocationsReported[s.t] {
		noAllocationsReported[s.t] = true
		s.t.Errorf("%s: /Mynet.State lists no pool allocations (Addrs), so a leaked address cannot be seen there", phase)
	}
	return took, allocated
}

// noAllocationsReported: the test already said that the dump has no
// allocations. Tests run one at a time.
var noAllocationsReported = map[*testing.T]bool{}
