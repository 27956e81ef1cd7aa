package doctor

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// The doctor tests create each problem the doctor claims to find in a
// throwaway network namespace, check that the doctor reports it with its
// fix, and, where the fix is a plain command, run it and check that the
// problem is gone.

const (
	docInst = "doctor-test"
	docNet1 = "d0c0000000011111111111111111111111111111111111111111111111111111"
	docNet2 = "d0c0000000022222222222222222222222222222222222222222222222222222"
	docEp1  = "d0ce00000001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	docEp2  = "d0ce00000002bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	unknown = "0000deadbeef0000000000000000000000000000000000000000000000000000"
)

// docHarness is a namespace with one healthy network and endpoint built by
// the real dataplane, and a daemon socket serving the matching state.
type docHarness struct {
	t       *testing.T
	dp      *bridge.Dataplane
	srv     *stateServer
	net1    model.Network
	ep1     model.Endpoint
	procSys string
	target  cli.Target
}

func healthyDump() *plugin.Dump {
	host, ctr := model.VethNames(docEp1)
	return &plugin.Dump{
		Networks: []state.Network{{ID: docNet1, Bridge: model.BridgeName(docNet1), ICC: true, Masquerade: true,
			IPv4: []state.Subnet{{Pool: "10.231.0.0/24", Gateway: "10.231.0.1/24"}}}},
		Endpoints: []state.Endpoint{{NetworkID: docNet1, ID: docEp1, HostVeth: host, ContainerVeth: ctr,
			MAC: "02:00:00:00:00:01", IPv4: "10.231.0.2/24"}},
		Pools: []state.Pool{},
	}
}

// withDoctor runs fn in a fresh namespace holding the healthy setup.
func withDoctor(t *testing.T, fn func(h *docHarness)) { withDoctorOn(t, "", fn) }

// withDoctorOn is withDoctor with mynet's rules on a firewall backend of
// the test's choice ("": the default).
func withDoctorOn(t *testing.T, firewall string, fn func(h *docHarness)) {
	nstest.RequireCommand(t, "iptables")
	nstest.RequireCommand(t, "ip")
	nstest.Run(t, func() {
		requireTestNamespace(t)
		h := &docHarness{t: t, procSys: "/proc/sys"}
		h.srv = newStateServer(t, healthyDump())
		if err := os.Chmod(h.srv.socket, 0o660); err != nil {
			t.Fatal(err)
		}
		h.target = cli.Target{Socket: h.srv.socket, Instance: docInst, InstanceKnown: true, Restart: "restart-mynet"}
		nl, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		dp, err := bridge.New(bridge.Config{Instance: docInst, Netlink: nl, Firewall: firewall})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		h.dp = dp
		h.net1 = model.Network{ID: docNet1, Bridge: model.BridgeName(docNet1), ICC: true, Masquerade: true,
			IPv4: []model.Subnet{{Pool: netip.MustParsePrefix("10.231.0.0/24"), Gateway: netip.MustParsePrefix("10.231.0.1/24")}}}
		host, ctr := model.VethNames(docEp1)
		h.ep1 = model.Endpoint{NetworkID: docNet1, ID: docEp1, Bridge: h.net1.Bridge, HostVeth: host, ContainerVeth: ctr,
			MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
		ctx := context.Background()
		if err := dp.EnsureNetwork(ctx, h.net1); err != nil {
			t.Fatal(err)
		}
		if err := dp.EnsureEndpoint(ctx, h.ep1); err != nil {
			t.Fatal(err)
		}
		fn(h)
	})
}

// hostNS is the namespace the tests started in, taken before any test
// moves a thread elsewhere.
var hostNS, hostNSErr = netns.Get()

// requireTestNamespace stops a test that would change the host: the
// calling thread must be in a namespace other than the one the tests
// started in.
func requireTestNamespace(t *testing.T) {
	t.Helper()
	if hostNSErr != nil {
		t.Fatal(hostNSErr)
	}
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if cur.Equal(hostNS) {
		t.Fatal("not in a test namespace: refusing to change the host")
	}
}

func (h *docHarness) run() doctorReport {
	d := newDoctor(h.target, &cli.Env{Stdout: io.Discard})
	d.procSys = h.procSys
	return d.run(context.Background())
}

func (h *docHarness) sh(cmd string) {
	h.t.Helper()
	if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
		h.t.Fatalf("%s: %v: %s", cmd, err, out)
	}
}

func problems(rep doctorReport) []finding {
	var out []finding
	for _, f := range rep.Findings {
		if f.Status == statusProblem {
			out = append(out, f)
		}
	}
	return out
}

func findingsText(rep doctorReport) string {
	var b strings.Builder
	writeDoctor(&b, rep)
	return b.String()
}

// brNetfilter reports whether br_netfilter's switches exist here.
func brNetfilter() bool {
	_, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables")
	return err == nil
}

func TestDoctorHealthy(t *testing.T) {
	withDoctor(t, func(h *docHarness) {
		rep := h.run()
		for _, p := range problems(rep) {
			if p.Check == "br_netfilter" && !brNetfilter() {
				continue // the host lacks the module; covered below
			}
			t.Errorf("problem on a healthy setup: %+v", p)
		}
		text := findingsText(rep)
		for _, want := range []string{`ok +socket +\S+ answers \(daemon pid ` + strconv.Itoa(os.Getpid()) + `\)`, `ok +ip_forward `,
			`ok +state +1 network and 1 endpoint in the state match the kernel`, `info +forward_policy +FORWARD policy is ACCEPT`, `info +iptables_backend +no Docker chains`} {
			if !regexp.MustCompile(want).MatchString(text) {
				t.Errorf("report lacks %q:\n%s", want, text)
			}
		}
		if rep.Problems == 0 && !strings.HasSuffix(text, "no problems found\n") {
			t.Errorf("no summary line:\n%s", text)
		}
		if h.srv.calls.Load() != 2 {
			t.Errorf("state fetched %d times, want 2 (before and after the kernel scan)", h.srv.calls.Load())
		}
	})
}

// Each case breaks the healthy setup one way; the doctor must report the
// check with a fix containing fixPart, and nothing else. When apply is set
// the fix is applied (run, or done as the daemon's reconcile would do it)
// and the doctor must then find nothing.
func TestDoctorFindsEachProblem(t *testing.T) {
	for _, c := range []struct {
		name    string
		needs   func() bool
		breakIt func(h *docHarness)
		check   string
		msgPart string
		fixPart string
		// runFix runs each line of the fix; apply is the alternative for
		// fixes that ask the daemon to reconcile.
		runFix bool
		apply  func(h *docHarness)
		// others are further checks the break makes fail.
		others []string
	}{
		{
			name:    "ip_forward off",
			breakIt: func(h *docHarness) { writeProc(h.t, "/proc/sys/net/ipv4/ip_forward", "0") },
			check:   "ip_forward", msgPart: "net.ipv4.ip_forward = 0", fixPart: "sysctl -w net.ipv4.ip_forward=1", runFix: true,
		},
		{
			name: "bridge-nf-call-iptables off",
			// Per namespace since Linux 5.3; global before, where the
			// test would change the host.
			needs:   func() bool { return brNetfilter() && kernelAtLeast(5, 3) },
			breakIt: func(h *docHarness) { writeProc(h.t, "/proc/sys/net/bridge/bridge-nf-call-iptables", "0") },
			check:   "br_netfilter", msgPart: "bridge-nf-call-iptables = 0", fixPart: "sysctl -w net.bridge.bridge-nf-call-iptables=1", runFix: true,
		},
		{
			name: "br_netfilter not loaded",
			breakIt: func(h *docHarness) {
				// A /proc/sys without net/bridge, as on a host without
				// the module.
				h.procSys = h.t.TempDir()
				if err := os.MkdirAll(filepath.Join(h.procSys, "net/ipv4"), 0o755); err != nil {
					h.t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(h.procSys, "net/ipv4/ip_forward"), []byte("1\n"), 0o644); err != nil {
					h.t.Fatal(err)
				}
			},
			check: "br_netfilter", msgPart: "not loaded", fixPart: "modprobe br_netfilter",
		},
		{
			name: "orphan bridge",
			breakIt: func(h *docHarness) {
				addLink(h.t, "mn-orphan", "mynet:"+docInst+":net:"+unknown)
				// Another instance's link is not this one's business.
				addLink(h.t, "mn-other", "mynet:someone-else:net:"+unknown)
			},
			check: "orphan_link", msgPart: "bridge mn-orphan is tagged with network 0000deadbeef", fixPart: "ip link del mn-orphan", runFix: true,
		},
		{
			name:    "orphan veth",
			breakIt: func(h *docHarness) { addLink(h.t, "mnv-orphan", "mynet:"+docInst+":ep:"+unknown) },
			check:   "orphan_link", msgPart: "veth mnv-orphan is tagged with endpoint 0000deadbeef", fixPart: "ip link del mnv-orphan", runFix: true,
		},
		{
			name: "link of another state generation",
			breakIt: func(h *docHarness) {
				addLink(h.t, "mn-foreign", model.Tag{Instance: docInst, Generation: "0badc0de", Kind: model.KindNetwork, ID: unknown}.String())
			},
			check: "foreign_link", msgPart: "mn-foreign is the bridge of network 0000deadbeef under another state file (generation 0badc0de",
			fixPart: "ip link del mn-foreign   # if no running container needs it\nmynet serve --discard-orphans --name " + docInst,
			// Not runFix: the second line starts a daemon.
			apply: func(h *docHarness) { h.sh("ip link del mn-foreign") },
		},
		{
			name: "rule naming an unknown network",
			breakIt: func(h *docHarness) {
				filter, _ := model.ChainsFor(docInst).ByTable()
				h.sh("iptables -w -t filter -A " + filter[0] + ` -o mn-gone -m comment --comment "mynet net=` + unknown + `" -j ACCEPT`)
			},
			check: "orphan_rule", msgPart: "1 iptables rule in ", fixPart: ` -t filter -D ` + instanceChain(0) + ` -o mn-gone -m comment --comment "mynet net=` + unknown + `" -j ACCEPT`, runFix: true,
		},
		{
			name: "network built but not in the state",
			breakIt: func(h *docHarness) {
				n2 := model.Network{ID: docNet2, Bridge: model.BridgeName(docNet2), ICC: true, Masquerade: true,
					IPv4: []model.Subnet{{Pool: netip.MustParsePrefix("10.232.0.0/24"), Gateway: netip.MustParsePrefix("10.232.0.1/24")}}}
				if err := h.dp.EnsureNetwork(context.Background(), n2); err != nil {
					h.t.Fatal(err)
				}
			},
			check: "orphan_rule", msgPart: "name network d0c000000002, which the state does not know", fixPart: "-D " + instanceChain(0), runFix: true,
			others: []string{"orphan_link"},
		},
		{
			name: "state network without a bridge",
			breakIt: func(h *docHarness) {
				d := healthyDump()
				d.Networks = append(d.Networks, state.Network{ID: docNet2, Bridge: "br-lost", ICC: true,
					IPv4: []state.Subnet{{Pool: "10.232.0.0/24", Gateway: "10.232.0.1/24"}}})
				h.srv.dump.Store(d)
			},
			check: "missing_bridge", msgPart: "bridge br-lost of network d0c000000002 is missing", fixPart: "kill -HUP " + strconv.Itoa(os.Getpid()),
			others: []string{"missing_rules"},
			apply: func(h *docHarness) {
				n2 := model.Network{ID: docNet2, Bridge: "br-lost", ICC: true,
					IPv4: []model.Subnet{{Pool: netip.MustParsePrefix("10.232.0.0/24"), Gateway: netip.MustParsePrefix("10.232.0.1/24")}}}
				if err := h.dp.EnsureNetwork(context.Background(), n2); err != nil {
					h.t.Fatal(err)
				}
			},
		},
		{
			name:    "endpoint veth deleted",
			breakIt: func(h *docHarness) { h.sh("ip link del " + h.ep1.HostVeth) },
			check:   "missing_veth", msgPart: "host veth " + vethOf(docEp1) + " of endpoint d0ce00000001 (10.231.0.2/24)", fixPart: "docker network disconnect -f " + docNet1[:12] + " CONTAINER",
			apply: func(h *docHarness) {
				if err := h.dp.EnsureEndpoint(context.Background(), h.ep1); err != nil {
					h.t.Fatal(err)
				}
			},
		},
		{
			name:    "endpoint veth off its bridge",
			breakIt: func(h *docHarness) { h.sh("ip link set " + h.ep1.HostVeth + " nomaster") },
			check:   "missing_veth", msgPart: "is not on bridge " + model.BridgeName(docNet1), fixPart: "ip link set " + vethOf(docEp1) + " master " + model.BridgeName(docNet1), runFix: true,
		},
		{
			name: "interface squatting a bridge name",
			breakIt: func(h *docHarness) {
				h.sh("ip link del " + h.net1.Bridge + " && ip link add " + h.net1.Bridge + " type bridge")
			},
			check: "missing_bridge", msgPart: "is not mynet's (type bridge", fixPart: "ip link del " + model.BridgeName(docNet1),
			others: []string{"missing_veth"},
		},
		{
			name: "network rules flushed",
			breakIt: func(h *docHarness) {
				chains := model.ChainsFor(docInst)
				for _, c := range []string{chains.Forward, chains.Isolation, chains.LAN} {
					h.sh("iptables -w -t filter -F " + c)
				}
				h.sh("iptables -w -t nat -F " + chains.Postrouting)
				h.sh("iptables -w -t mangle -F " + chains.Direct)
			},
			check: "missing_rules", msgPart: "network d0c000000001 has no iptables rules", fixPart: "kill -HUP",
			others: []string{"missing_rules"}, // the jump from the isolation chain went too
			apply:  func(h *docHarness) { h.reconcile() },
		},
		{
			name: "jump into mynet's chains deleted",
			breakIt: func(h *docHarness) {
				h.sh("iptables -w -D FORWARD -m comment --comment \"mynet " + docInst + "\" -j " + instanceChain(0))
			},
			check: "missing_rules", msgPart: "no jump from FORWARD or DOCKER-USER into " + instanceChain(0), fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name: "direct-routing hook deleted",
			breakIt: func(h *docHarness) {
				h.sh("iptables -w -t mangle -D PREROUTING -m comment --comment \"mynet " + docInst + "\" -j " + docChains.Direct)
			},
			check: "missing_rules", msgPart: "no jump from mangle PREROUTING into " + docChains.Direct + " (iptables): direct-routing protection is off", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "direct-routing drop deleted",
			breakIt: func(h *docHarness) { h.deleteRules("mangle", docChains.Direct, "-j DROP") },
			check:   "missing_rules", msgPart: "network d0c000000001 lacks 1 iptables rule of its own: " + docChains.Direct + " (mangle): its direct-routing protection is off", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "direct-routing chain flushed",
			breakIt: func(h *docHarness) { h.sh("iptables -w -t mangle -F " + docChains.Direct) },
			check:   "missing_rules", msgPart: "network d0c000000001 lacks 2 iptables rules of its own: " + docChains.Direct + " (mangle)", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name: "rule in the mangle table naming an unknown network",
			breakIt: func(h *docHarness) {
				h.sh("iptables -w -t mangle -A " + docChains.Direct + ` -d 10.99.0.0/24 -m comment --comment "mynet net=` + unknown + `" -j DROP`)
			},
			check: "orphan_rule", msgPart: "1 iptables rule in " + docChains.Direct + " name network 0000deadbeef", fixPart: " -t mangle -D " + docChains.Direct + " -d 10.99.0.0/24", runFix: true,
		},
		{
			name: "DNAT hook deleted",
			breakIt: func(h *docHarness) {
				h.sh("iptables -w -t nat -D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"mynet " + docInst + "\" -j " + docChains.DNAT)
			},
			check: "missing_rules", msgPart: "no jump from nat PREROUTING into " + docChains.DNAT + " (iptables): published ports cannot be reached from other hosts", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "masquerading hook deleted",
			breakIt: func(h *docHarness) { h.deleteRules("nat", "POSTROUTING", "-j "+docChains.Postrouting) },
			check:   "missing_rules", msgPart: "no jump from nat POSTROUTING into " + docChains.Postrouting, fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "jump into the isolation chain deleted",
			breakIt: func(h *docHarness) { h.sh("iptables -w -D " + docChains.Forward + " -j " + docChains.Isolation) },
			check:   "missing_rules", msgPart: "no jump from filter " + docChains.Forward + " into " + docChains.Isolation + " (iptables): no isolation drop is reached", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "LAN chain's accept deleted",
			breakIt: func(h *docHarness) { h.sh("iptables -w -D " + docChains.LAN + " -j ACCEPT") },
			check:   "missing_rules", msgPart: "rule -A " + docChains.LAN + " -j ACCEPT (filter, iptables) is missing: networks of gateway mode nat-unprotected are closed to the LAN", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "network's masquerading deleted",
			breakIt: func(h *docHarness) { h.deleteRules("nat", docChains.Postrouting, "-s 10.231.0.0/24") },
			check:   "missing_rules", msgPart: "network d0c000000001 lacks 1 iptables rule of its own: " + docChains.Postrouting + " (nat): its egress", fixPart: "kill -HUP",
			apply: func(h *docHarness) { h.reconcile() },
		},
		{
			name:    "socket mode too open",
			breakIt: func(h *docHarness) { chmod(h.t, h.srv.socket, 0o666) },
			check:   "socket", msgPart: "has mode 0666, want 0660: any local user", fixPart: "chmod 0660 ", runFix: true,
		},
		{
			name:    "socket owned by another user",
			breakIt: func(h *docHarness) { h.sh("chown 65534 " + h.srv.socket) },
			check:   "socket", msgPart: "want root", fixPart: "chown root ", runFix: true,
		},
		{
			name: "iptables backend differs from Docker's",
			needs: func() bool {
				_, err := exec.LookPath("iptables-legacy")
				return err == nil && iptablesBackend(context.Background(), "iptables") == backendNFT
			},
			// Docker's chains in legacy iptables, mynet's in nf_tables.
			breakIt: func(h *docHarness) { h.sh("iptables-legacy -w -N DOCKER && iptables-legacy -w -N DOCKER-USER") },
			check:   "iptables_backend", msgPart: "mynet uses nf_tables (its chains are there) but Docker's rules are in legacy",
			fixPart: "update-alternatives --set iptables /usr/sbin/iptables-legacy",
			// Not applied: it would switch the host's alternatives.
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.needs != nil && !c.needs() {
				t.Skip("not possible on this host")
			}
			withDoctor(t, func(h *docHarness) {
				h.t = t
				c.breakIt(h)
				rep := h.run()
				var found *finding
				for _, p := range problems(rep) {
					switch {
					case p.Check == c.check && strings.Contains(p.Message, c.msgPart) && found == nil:
						found = &p
					case p.Check == "br_netfilter" && !brNetfilter():
					case containsString(c.others, p.Check):
					default:
						t.Errorf("unexpected problem: %+v", p)
					}
				}
				if found == nil {
					t.Fatalf("no %s problem mentioning %q:\n%s", c.check, c.msgPart, findingsText(rep))
				}
				if !strings.Contains(found.Fix, c.fixPart) {
					t.Errorf("fix %q lacks %q", found.Fix, c.fixPart)
				}
				if !strings.Contains(findingsText(rep), "fix: ") {
					t.Errorf("table output shows no fix:\n%s", findingsText(rep))
				}
				switch {
				case c.runFix:
					// The fixes of every problem found, as an operator
					// would run them.
					for _, p := range problems(rep) {
						for _, l := range strings.Split(p.Fix, "\n") {
							h.sh(l)
						}
					}
				case c.apply != nil:
					c.apply(h)
				default:
					return
				}
				if rep := h.run(); len(problemsExcept(rep, "br_netfilter")) > 0 {
					t.Errorf("problems left after the fix:\n%s", findingsText(rep))
				}
			})
		})
	}
}

// TestDoctorSocketDown: a socket nobody listens on is reported, and the
// checks that need the state say they were skipped.
func TestDoctorSocketDown(t *testing.T) {
	withDoctor(t, func(h *docHarness) {
		dead := filepath.Join(t.TempDir(), "dead.sock")
		l, err := net.Listen("unix", dead)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		chmod(t, dead, 0o660)
		h.target.Socket = dead
		rep := h.run()
		text := findingsText(rep)
		if !regexp.MustCompile(`PROBLEM +socket `).MatchString(text) || !strings.Contains(text, "stale socket") || !strings.Contains(text, "fix: restart-mynet") {
			t.Errorf("dead socket not reported:\n%s", text)
		}
		if !regexp.MustCompile(`skipped +state `).MatchString(text) {
			t.Errorf("state checks not marked skipped:\n%s", text)
		}

		h.target.Socket = filepath.Join(t.TempDir(), "none.sock")
		if text := findingsText(h.run()); !strings.Contains(text, "no socket at") {
			t.Errorf("missing socket not reported:\n%s", text)
		}
	})
}

// TestDoctorInstance: the instance is read from the bridges' tags when
// not given, and a wrong one given explicitly is a problem.
func TestDoctorInstance(t *testing.T) {
	withDoctor(t, func(h *docHarness) {
		h.target.Instance, h.target.InstanceKnown = "mynet", false
		rep := h.run()
		if rep.Instance != docInst || len(problemsExcept(rep, "br_netfilter")) > 0 {
			t.Errorf("instance not detected:\n%s", findingsText(rep))
		}
		h.target.Instance, h.target.InstanceKnown = "wrong", true
		rep = h.run()
		found := false
		for _, p := range problems(rep) {
			found = found || (p.Check == "instance" && strings.Contains(p.Fix, "--instance "+docInst))
		}
		if !found {
			t.Errorf("wrong --instance not reported:\n%s", findingsText(rep))
		}
	})
}

// TestDoctorForwardDrop: a DROP policy is information, not a problem.
func TestDoctorForwardDrop(t *testing.T) {
	withDoctor(t, func(h *docHarness) {
		h.sh("iptables -w -P FORWARD DROP")
		rep := h.run()
		if len(problemsExcept(rep, "br_netfilter")) > 0 || !regexp.MustCompile(`info +forward_policy +FORWARD policy is DROP`).MatchString(findingsText(rep)) {
			t.Errorf("FORWARD DROP:\n%s", findingsText(rep))
		}
	})
}

// TestDoctorNFTRules: with mynet's rules in nftables, a healthy setup
// passes the table check, and a network's flushed chain is a problem
// naming the network, until the network is ensured again.
func TestDoctorNFTRules(t *testing.T) {
	nstest.RequireCommand(t, "nft")
	withDoctorOn(t, model.FirewallNFTables, func(h *docHarness) {
		rep := h.run()
		if text := findingsText(rep); len(problemsExcept(rep, "br_netfilter")) > 0 || !regexp.MustCompile(`ok +nftables_rules +mynet's nftables tables hold what 1 network`).MatchString(text) {
			t.Fatalf("healthy, on nftables:\n%s", text)
		}
		h.sh("nft flush chain ip " + model.NFTTableName(docInst) + " " + model.NFTNetworkChain(docNet1, model.NFTChainIn))
		text := findingsText(h.run())
		if !regexp.MustCompile(`PROBLEM +nftables_rules +table ip ` + model.NFTTableName(docInst) + `, network ` + model.Short(docNet1) + `: chain \S+ does not hold the rules mynet builds`).MatchString(text) {
			t.Errorf("flushed chain not reported:\n%s", text)
		}
		if err := h.dp.EnsureNetwork(context.Background(), h.net1); err != nil {
			t.Fatal(err)
		}
		if rep := h.run(); len(problemsExcept(rep, "br_netfilter")) > 0 {
			t.Errorf("after the repair:\n%s", findingsText(rep))
		}
	})
}

// TestDoctorExitStatus: Run fails when there is a problem and prints
// JSON on request.
func TestDoctorExitStatus(t *testing.T) {
	withDoctor(t, func(h *docHarness) {
		chmod(t, h.srv.socket, 0o666)
		var out strings.Builder
		err := Run([]string{"--socket", h.srv.socket, "--instance", docInst, "--format", "json"}, &cli.Env{Stdout: &out})
		if err == nil || !strings.Contains(err.Error(), "problem") {
			t.Errorf("Run = %v, want a problem count", err)
		}
		if !strings.Contains(out.String(), `"Check": "socket"`) || !strings.Contains(out.String(), `"Fix": "chmod 0660 `) {
			t.Errorf("JSON report:\n%s", out.String())
		}
	})
}

func problemsExcept(rep doctorReport, check string) []finding {
	var out []finding
	for _, p := range problems(rep) {
		if p.Check != check || brNetfilter() {
			out = append(out, p)
		}
	}
	return out
}

// reconcile does what the daemon's reconcile does for the healthy setup.
func (h *docHarness) reconcile() {
	ctx := context.Background()
	if err := h.dp.EnsureNetwork(ctx, h.net1); err != nil {
		h.t.Fatal(err)
	}
	if err := h.dp.EnsureEndpoint(ctx, h.ep1); err != nil {
		h.t.Fatal(err)
	}
}

var docChains = model.ChainsFor(docInst)

// deleteRules deletes the rules of chain whose `iptables -S` line
// contains match, at least one.
func (h *docHarness) deleteRules(table, chain, match string) {
	h.t.Helper()
	out, err := exec.Command("iptables", "-w", "-t", table, "-S", chain).Output()
	if err != nil {
		h.t.Fatalf("iptables -t %s -S %s: %v", table, chain, err)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "-A "); ok && strings.Contains(l, match) {
			h.sh("iptables -w -t " + table + " -D " + rest)
			n++
		}
	}
	if n == 0 {
		h.t.Fatalf("no rule of %s %s matches %q:\n%s", table, chain, match, out)
	}
}

func instanceChain(i int) string {
	filter, _ := model.ChainsFor(docInst).ByTable()
	return filter[i]
}

func vethOf(ep string) string {
	host, _ := model.VethNames(ep)
	return host
}

// addLink adds a bridge (some kernels lack dummy links; none that runs
// mynet lacks bridges) carrying alias.
func addLink(t *testing.T, name, alias string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetAlias(l, alias); err != nil {
		t.Fatal(err)
	}
}

func writeProc(t *testing.T, path, v string) {
	t.Helper()
	requireTestNamespace(t)
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		return false
	}
	return maj > major || maj == major && min >= minor
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
