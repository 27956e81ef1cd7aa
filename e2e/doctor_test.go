package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestE2EDoctorHealthy: on a live engine, with mynet networks of each kind
// whose rules differ (gateway mode nat, dual-stack; nat-unprotected;
// internal), a published port, and a network of Docker's bridge driver (so
// that the engine's chains, DOCKER-USER among them, hold mynet's forward
// hook), `mynet doctor` finds nothing wrong: the rules it expects of each
// network and chain, as the dataplane defines them, match what this
// engine's iptables lists, in the filter, nat and mangle tables. A doctor
// that misreads a newer iptables' listing would report missing rules here.
//
// Uses 10.191.1-4.0/24, fd00:191::/64 and host port 15910.
func TestE2EDoctorHealthy(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	nat := s.mynetNetwork("nat", "10.191.1.0/24", "--ipv6", "--subnet", "fd00:191::/64")
	open := s.mynetNetwork("open", "10.191.2.0/24", "-o", optGatewayMode4+"=nat-unprotected")
	internal := s.mynetNetwork("internal", "10.191.3.0/24", "--internal")
	s.network("docker", "-d", "bridge", "--subnet", "10.191.4.0/24")
	s.start("web", []string{"--net", nat, "-p", "15910:80"}, httpd(80)...)
	s.container("open", open)
	s.container("internal", internal)

	var stderr strings.Builder
	cmd := exec.Command(env.plugin.bin, "doctor", "--name", env.plugin.name, "--format", "json")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var rep struct {
		Findings []struct{ Check, Status, Message, Fix string }
		Problems int
	}
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("mynet doctor: %v (%v):\n%s%s", err, jerr, out, stderr.String())
	}
	var checks []string
	for _, f := range rep.Findings {
		checks = append(checks, f.Status+" "+f.Check+": "+f.Message)
		if f.Status == "problem" {
			t.Errorf("doctor reports a problem on a healthy setup: %s: %s\n  fix: %s", f.Check, f.Message, f.Fix)
		}
	}
	if err != nil || rep.Problems != 0 {
		t.Errorf("mynet doctor: %v, %d problems: %s", err, rep.Problems, stderr.String())
	}
	want := "ok state: 3 networks and 3 endpoints in the state match the kernel"
	if !strings.Contains(strings.Join(checks, "\n"), want) {
		t.Errorf("doctor did not compare the state with the kernel (want %q):\n%s", want, strings.Join(checks, "\n"))
	}
}
