package doctor

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/netutil/nstest"
)

// TestCheckFirewall reports both backends in a namespace where Docker's
// rules are in nftables (a copy of Docker 29's table) and mynet's chains
// in iptables, then in both.
func TestCheckFirewall(t *testing.T) {
	nstest.RequireCommand(t, "nft")
	nstest.RequireCommand(t, "iptables")
	nstest.Run(t, func() {
		sh := func(args ...string) {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
		}
		var daemonArgs []string // the daemon's command line; nil: no daemon answered
		check := func() finding {
			d := newDoctor(cli.Target{Instance: "mynet", Restart: "systemctl restart mynet"}, &cli.Env{})
			if daemonArgs != nil {
				d.pid = 4242
				d.cmdline = func(pid int) ([]string, error) {
					if pid != 4242 {
						t.Errorf("command line of pid %d read, want the daemon's", pid)
					}
					return daemonArgs, nil
				}
			}
			d.checkFirewall()
			if len(d.report.Findings) != 1 {
				t.Fatalf("findings: %+v", d.report.Findings)
			}
			return d.report.Findings[0]
		}
		if f := check(); f.Status != statusOK || !strings.Contains(f.Message, "dockerd's rules: none found; mynet's: none found") {
			t.Errorf("empty namespace: %+v", f)
		}
		sh("nft", "-f", "../../bridge/testdata/nft/docker29-bridges-ip.nft")
		sh("iptables", "-N", "MYNET-FORWARD")
		if f := check(); f.Status != statusProblem || !strings.Contains(f.Message, "dockerd's rules: nftables; mynet's: iptables") || !strings.Contains(f.Fix, "--firewall auto") {
			t.Errorf("Docker on nftables, mynet on iptables: %+v", f)
		}
		// A daemon with an explicit --firewall never follows: the
		// mismatch lasts, and the fix is the flag.
		daemonArgs = []string{"mynet", "serve", "--firewall", "iptables"}
		if f := check(); f.Status != statusProblem || !strings.Contains(f.Message, "--firewall iptables, which never follows dockerd") ||
			!strings.Contains(f.Fix, "--firewall auto") || !strings.Contains(f.Fix, "--firewall nftables") {
			t.Errorf("Docker on nftables, mynet on iptables by its flag: %+v", f)
		}
		// Under auto the next pass moves the rules: the fix is a pass now.
		daemonArgs = []string{"mynet", "serve", "--name", "mynet"}
		if f := check(); f.Status != statusProblem || !strings.Contains(f.Message, "--firewall auto") || !strings.Contains(f.Fix, "kill -HUP 4242") {
			t.Errorf("Docker on nftables, mynet on iptables under auto: %+v", f)
		}
		daemonArgs = nil
		sh("nft", "add", "table", "ip", "mynet")
		if f := check(); f.Status != statusProblem || !strings.Contains(f.Message, "mynet's: iptables and nftables") {
			t.Errorf("mynet on both: %+v", f)
		}
		sh("iptables", "-X", "MYNET-FORWARD")
		if f := check(); f.Status != statusOK || !strings.Contains(f.Message, "dockerd's rules: nftables; mynet's: nftables") {
			t.Errorf("both on nftables: %+v", f)
		}
	})
}

func TestFirewallFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mynet", "serve"}, "auto"},
		{[]string{"mynet", "serve", "--firewall", "nftables"}, "nftables"},
		{[]string{"mynet", "serve", "-firewall=iptables"}, "iptables"},
		{[]string{"mynet", "serve", "--firewall=iptables", "--firewall", "auto"}, "auto"},
		{[]string{"mynet", "serve", "--", "--firewall", "iptables"}, "auto"},
		{[]string{"/usr/bin/mynet", "serve", "--name", "firewall", "--log-level", "debug"}, "auto"},
	} {
		if got := firewallFlag(tc.args); got != tc.want {
			t.Errorf("firewallFlag(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

// TestNFTForwardPolicy: with mynet's rules in nftables, an iptables
// FORWARD policy of DROP is a problem until mynet's bridges are accepted
// ahead of it, in each family on its own; the fix printed is the fix.
func TestNFTForwardPolicy(t *testing.T) {
	nstest.RequireCommand(t, "iptables")
	nstest.RequireCommand(t, "ip6tables")
	nstest.Run(t, func() {
		check := func() finding {
			d := newDoctor(cli.Target{Instance: "mynet"}, &cli.Env{})
			d.checkNFTForwardPolicy()
			if len(d.report.Findings) != 1 {
				t.Fatalf("findings: %+v", d.report.Findings)
			}
			return d.report.Findings[0]
		}
		run := func(line string) {
			f := strings.Fields(strings.TrimSpace(line))
			if out, err := exec.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", line, err, out)
			}
		}
		if f := check(); f.Status != statusOK {
			t.Errorf("policies ACCEPT: %+v", f)
		}
		run("iptables -w -P FORWARD DROP")
		f := check()
		if f.Status != statusProblem || !strings.Contains(f.Message, "FORWARD policy of iptables is DROP") || strings.Contains(f.Fix, "ip6tables") {
			t.Fatalf("iptables DROP: %+v", f)
		}
		for _, line := range strings.Split(f.Fix, "\n") {
			run(line)
		}
		if f := check(); f.Status != statusOK {
			t.Errorf("after the printed fix: %+v", f)
		}
		run("ip6tables -w -P FORWARD DROP")
		run("iptables -w -D FORWARD -o mn-+ -j ACCEPT")
		if f := check(); f.Status != statusProblem || !strings.Contains(f.Message, "iptables and ip6tables is DROP") {
			t.Errorf("one direction accepted in iptables, ip6tables DROP: %+v", f)
		}
	})
}
