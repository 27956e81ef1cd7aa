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
		check := func() finding {
			d := newDoctor(cli.Target{Instance: "mynet", Restart: "systemctl restart mynet"}, &cli.Env{})
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
