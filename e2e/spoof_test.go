package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// optAntiSpoofing is the -o key that turns mynet's anti-spoofing off for a
// network (it is on by default).
const optAntiSpoofing = "mynet.anti_spoofing"

// TestE2EAntiSpoofing: containers on one network try to take over a
// victim's address with what Docker gives them by default (CAP_NET_RAW and
// a namespaced sysctl, no extra capability) and with CAP_NET_ADMIN on top:
// gratuitous ARP requests and replies for the victim's address, pings from
// the victim's address, and the victim's MAC on their own eth0. With
// mynet's anti-spoofing none of it has an effect: an observer container and
// the host keep the victim's real MAC in their neighbour tables, reach the
// victim's web server, and the forged pings never arrive.
//
// Controls: the same attacks, on a network with -o mynet.anti_spoofing=false
// (and, with MYNET_E2E_DRIVER=bridge, on Docker's own bridge driver, which
// filters nothing), must poison the neighbour tables and deliver the forged
// pings; otherwise the probes would not test what they claim.
//
// Subnets 10.150.N.0/24.
func TestE2EAntiSpoofing(t *testing.T) {
	type variant struct {
		name      string
		subnet    string
		opts      []string
		protected bool
	}
	variants := []variant{{name: "bridge-driver", subnet: "10.150.1.0/24"}}
	if env.plugin != nil || env.skip != "" {
		variants = []variant{
			{name: "default", subnet: "10.150.1.0/24", protected: true},
			{name: "off", subnet: "10.150.2.0/24", opts: []string{"-o", optAntiSpoofing + "=false"}},
		}
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			s := newScenario(t)
			n := s.mynetNetwork("net", v.subnet, v.opts...)
			spoofScenario(t, s, n, v.protected)
		})
	}
}

func spoofScenario(t *testing.T, s *scenario, n string, protected bool) {
	// The victim may pin its own neighbour entries (see below).
	victim := s.start("victim", []string{"--net", n, "--cap-add", "NET_ADMIN"}, httpd(80)...)
	// The observer may manage its own neighbour table, to start each
	// attack from a correct entry.
	observer := s.start("observer", []string{"--net", n, "--cap-add", "NET_ADMIN"})
	// Default capabilities only; ip_nonlocal_bind is a namespaced sysctl any
	// user may set, and lets busybox arping claim an address it lacks.
	raw := s.start("raw", []string{"--net", n, "--sysctl", "net.ipv4.ip_nonlocal_bind=1"})
	admin := s.start("admin", []string{"--net", n, "--cap-add", "NET_ADMIN"})
	addrs := s.ips(n, victim, observer, raw, admin)
	vIP, oIP := addrs[0].String(), addrs[1].String()
	macs := map[string]string{}
	for _, c := range []string{victim, observer, raw, admin} {
		macs[c] = strings.TrimSpace(s.exec(c, "cat", "/sys/class/net/eth0/address"))
	}
	vMAC := macs[victim]
	web := netip.AddrPortFrom(addrs[0], 80)

	netID := docker(t, "network", "inspect", "-f", "{{.Id}}", n)
	br := "br-" + netID[:12]
	if env.plugin != nil {
		br = "mn-" + netID[:12]
	}
	// The victim's entries for the observer and the host (the gateway)
	// are pinned, so that it never probes them. Its first reply to each
	// leaves a STALE entry that the kernel probes 5 s later with a unicast
	// ARP request from the victim's own MAC; that request undoes a
	// poisoning done in the meantime, and made the controls below fail
	// about one run in two.
	s.exec(victim, "arp", "-i", "eth0", "-s", oIP, macs[observer])
	s.exec(victim, "arp", "-i", "eth0", "-s", defaultGateway(t, s.exec(victim, "ip", "route")),
		strings.TrimSpace(mustRun(t, "cat", "/sys/class/net/"+br+"/address")))
	victimPort := "" // the victim's bridge port, when its name is known
	if env.plugin != nil {
		victimPort = "mnv" + s.endpointID(victim, n)[:12]
		if protected {
			s.expectSpoofElements(n, victim, observer, raw, admin)
		}
	}

	// fresh gives the observer and the host a correct, recent entry for
	// the victim, as any traffic to it would; gratuitous ARP only updates
	// existing entries, so without one there would be nothing to poison.
	fresh := func() {
		t.Helper()
		s.exec(observer, "ip", "neigh", "flush", "dev", "eth0")
		_, _ = run("ip", "neigh", "del", vIP, "dev", br)
		s.expectPing(observer, vIP)
		s.expectPing(hostNS, vIP)
		if got := neighMAC(s.exec(observer, "ip", "neigh"), vIP); got != vMAC {
			t.Fatalf("before the attack, the observer has %q for %s, want the victim's %s", got, vIP, vMAC)
		}
	}
	// after checks who the observer and the host think has the victim's
	// address, given which attacker (if any) claimed it.
	after := func(attack, attacker string) {
		t.Helper()
		for who, table := range map[string]string{
			"observer " + observer: s.exec(observer, "ip", "neigh"),
			"the host":             mustRun(t, "ip", "neigh", "show", "dev", br),
		} {
			got := neighMAC(table, vIP)
			switch {
			case protected && got != vMAC:
				t.Errorf("%s: %s has %q for the victim's %s, want the victim's MAC %s (attacker: %s)", attack, who, got, vIP, vMAC, macs[attacker])
			case !protected && attacker != "" && got != macs[attacker]:
				t.Errorf("control, %s: %s has %q for %s, want it poisoned to the attacker's %s; the attack does not work, so the protected run proves nothing", attack, who, got, vIP, macs[attacker])
			}
		}
		if protected {
			s.expectPage(observer, web)
		}
	}

	// 1. CAP_NET_RAW only: gratuitous ARP request and reply for the
	// victim's address, from the attacker's own MAC.
	fresh()
	s.attack(raw, "arping", "-U", "-c", "2", "-I", "eth0", "-s", vIP, vIP)
	s.attack(raw, "arping", "-A", "-c", "2", "-I", "eth0", "-s", vIP, vIP)
	after("gratuitous ARP with CAP_NET_RAW", raw)

	// 2. CAP_NET_ADMIN: the victim's address on its own eth0, announced.
	// First a control from its own address, which must arrive. (fresh
	// comes before the address: without a filter, the attacker would
	// answer the observer's ARP request for it too.)
	before := icmpInEchos(t, s, observer)
	s.expectPing(admin, oIP)
	if got := icmpInEchos(t, s, observer); got <= before {
		t.Fatalf("control: a ping from %s's own address did not reach %s (InEchos %d -> %d)", admin, observer, before, got)
	}
	fresh()
	s.exec(admin, "ip", "addr", "add", vIP+"/32", "dev", "eth0")
	s.attack(admin, "arping", "-U", "-c", "2", "-I", "eth0", vIP)
	s.attack(admin, "arping", "-A", "-c", "2", "-I", "eth0", vIP)
	after("gratuitous ARP with CAP_NET_ADMIN and the address configured", admin)

	// 3. Pings from the victim's address. The attacker knows the
	// observer's MAC, so the pings themselves go out (an ARP request from
	// the victim's address would be dropped before them).
	s.exec(admin, "arp", "-i", "eth0", "-s", oIP, macs[observer])
	before = icmpInEchos(t, s, observer)
	s.attack(admin, "ping", "-c", "3", "-W", "1", "-I", vIP, oIP)
	got := icmpInEchos(t, s, observer)
	switch {
	case protected && got != before:
		t.Errorf("%d pings with the victim's source address %s reached %s", got-before, vIP, observer)
	case !protected && got == before:
		t.Errorf("control: pings with the victim's source address %s did not reach %s", vIP, observer)
	}

	// 4. The victim's MAC on the attacker's eth0, announced: without a
	// filter the bridge moves the victim's MAC to the attacker's port and
	// sends the victim's traffic there.
	s.exec(admin, "ip", "addr", "del", vIP+"/32", "dev", "eth0")
	fresh()
	s.exec(admin, "ip", "link", "set", "eth0", "address", vMAC)
	s.exec(admin, "ip", "addr", "add", vIP+"/32", "dev", "eth0")
	s.attack(admin, "arping", "-U", "-c", "2", "-I", "eth0", vIP)
	if port := fdbPort(t, br, vMAC); victimPort != "" {
		switch {
		case protected && port != victimPort:
			t.Errorf("the bridge has the victim's MAC %s on port %q, want the victim's %s", vMAC, port, victimPort)
		case !protected && port == victimPort:
			t.Errorf("control: the bridge still has the victim's MAC on its own port after the attacker sent from it")
		}
	} else {
		t.Logf("the bridge has the victim's MAC %s on port %q", vMAC, port)
	}
	after("the victim's MAC", "")

	if protected {
		// Removing the containers removes their elements, and removing the
		// network the table.
		s.removeAll()
		if env.plugin != nil {
			s.expectNoSpoofTable()
		}
	}
}

// attack runs an attacker's command; it may well fail (a filtered arping or
// ping gets no answer), so only its output is logged.
func (s *scenario) attack(container string, args ...string) {
	s.t.Helper()
	out, err := run("docker", append([]string{"exec", container}, args...)...)
	s.t.Logf("%s: %s: err=%v\n%s", container, commandLine(args[0], args[1:]), err != nil, out)
}

// defaultGateway returns the next hop of the default route in the output
// of `ip route`.
func defaultGateway(t *testing.T, routes string) string {
	t.Helper()
	for line := range strings.Lines(routes) {
		if rest, ok := strings.CutPrefix(line, "default via "); ok {
			gw, _, _ := strings.Cut(rest, " ")
			return gw
		}
	}
	t.Fatalf("no default route in:\n%s", routes)
	return ""
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// neighMAC returns the lladdr of addr in `ip neigh` output, "" if none.
func neighMAC(table, addr string) string {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != addr {
			continue
		}
		for i := 1; i+1 < len(f); i++ {
			if f[i] == "lladdr" {
				return strings.ToLower(f[i+1])
			}
		}
	}
	return ""
}

// icmpInEchos reads the echo requests container has received, from its
// namespace's /proc/net/snmp.
func icmpInEchos(t *testing.T, s *scenario, container string) int {
	t.Helper()
	var names []string
	for _, line := range strings.Split(s.exec(container, "cat", "/proc/net/snmp"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Icmp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "InEchos" && i < len(f) {
				n, err := strconv.Atoi(f[i])
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Icmp InEchos in %s's /proc/net/snmp", container)
	return 0
}

// fdbPort returns the port the bridge forwards mac to, "" if it has not
// learned it.
func fdbPort(t *testing.T, br, mac string) string {
	t.Helper()
	if _, err := exec.LookPath("bridge"); err != nil {
		return ""
	}
	out := mustRun(t, "bridge", "fdb", "show", "br", br)
	for _, line := range strings.Split(out, "\n") {
		// 02:42:0a:96:01:02 dev mnv0123456789ab master mn-0123456789ab
		f := strings.Fields(line)
		if len(f) >= 3 && strings.EqualFold(f[0], mac) && f[1] == "dev" && !strings.Contains(line, "permanent") {
			return f[2]
		}
	}
	return ""
}

// spoofTable is the plugin's nftables table (family bridge), named as
// model.SpoofTableName names it.
func spoofTable() string {
	if env.plugin.name == "mynet" {
		return "mynet"
	}
	sum := sha256.Sum256([]byte(env.plugin.name))
	return "mynet_" + hex.EncodeToString(sum[:3])
}

// expectSpoofElements fails early, with a clear message, when the plugin
// has not put each container's host veth under the filter. It needs the
// nft binary, which mynet itself does not; without it the traffic checks
// alone decide.
func (s *scenario) expectSpoofElements(network string, containers ...string) {
	s.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	out, err := run("nft", "list", "table", "bridge", spoofTable())
	if err != nil {
		s.t.Fatalf("the plugin has no anti-spoofing table (is EnsureSpoofCheck wired into EnsureEndpoint?): %v", err)
	}
	for _, c := range containers {
		if id := s.endpointID(c, network); !strings.Contains(out, `"mnv`+id[:12]+`"`) {
			s.t.Errorf("the host veth mnv%s of %s is not under the anti-spoofing filter:\n%s", id[:12], c, out)
		}
	}
}

// expectNoSpoofTable waits for the plugin to drop its table once the last
// endpoint and network are gone.
func (s *scenario) expectNoSpoofTable() {
	s.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	deadline := time.Now().Add(leakGrace)
	for {
		out, err := run("nft", "list", "table", "bridge", spoofTable())
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("the anti-spoofing table outlived the last network by %v:\n%s", leakGrace, out)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
