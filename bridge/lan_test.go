package bridge

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// TestLANChain: the LAN chain of nat-unprotected lists Docker's bridges as
// Docker's own rules name them, whatever their names, internal networks'
// too, and follows them as they come and go; a fixed rule deleted from
// outside comes back in its place, ahead of the final ACCEPT, not after it.
// The fingerprint's Docker key changes with Docker's bridges, and only it.
func TestLANChain(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		// Docker's rules for a network whose bridge was named with
		// com.docker.network.bridge.name, and for an internal one.
		run(t, "iptables", "-N", "DOCKER-ISOLATION-STAGE-1")
		run(t, "iptables", "-N", "DOCKER-ISOLATION-STAGE-2")
		run(t, "iptables", "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "apps", "!", "-o", "apps", "-j", "DOCKER-ISOLATION-STAGE-2")
		run(t, "iptables", "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "vault", "!", "-d", "10.9.0.0/24", "-j", "DROP")
		run(t, "iptables", "-A", "DOCKER-ISOLATION-STAGE-1", "-o", "vault", "!", "-s", "10.9.0.0/24", "-j", "DROP")
		run(t, "iptables", "-A", "DOCKER-ISOLATION-STAGE-2", "-o", "apps", "-j", "DROP")
		// No cleanup of these: they go with the test's namespace, and a
		// t.Cleanup would run outside it, on the host's chains.
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.Unprotected4 = true
		ensure := func() {
			t.Helper()
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		lan := model.ChainsFor("mynet-test").LAN
		ret := "-A " + lan + " -i mn-aaaaaaaaaaaa -m comment --comment \"mynet net=" + nid1 + "\" -j RETURN"
		check := func(when string, bridges ...string) {
			t.Helper()
			want := []string{"-N " + lan, ret}
			for _, b := range bridges {
				want = append(want, "-A "+lan+" -i "+b+" -j RETURN")
			}
			want = append(want, "-A "+lan+" -j ACCEPT")
			got := strings.Split(strings.TrimSpace(output(t, "iptables", "-S", lan)), "\n")
			if !slices.Equal(got, want) {
				t.Fatalf("%s: chain %s:\n%s\nwant:\n%s", when, lan, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
		ensure()
		check("created", "apps", "vault")
		fp := fingerprint(t, d)

		run(t, "iptables", "-D", lan, "-i", "apps", "-j", "RETURN")
		ensure()
		check("after a fixed rule was deleted", "apps", "vault")

		run(t, "iptables", "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "br-0123", "!", "-o", "br-0123", "-j", "DOCKER-ISOLATION-STAGE-2")
		after := fingerprint(t, d)
		if changed := after.Changed(fp); !slices.Equal(changed, []string{model.DigestDocker}) {
			t.Errorf("a Docker network created changed the digests %q, want only %q", changed, model.DigestDocker)
		}
		ensure()
		check("after Docker created a network", "apps", "br-0123", "vault")

		run(t, "iptables", "-F", "DOCKER-ISOLATION-STAGE-1")
		ensure()
		check("after Docker removed its networks")

		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if got := output(t, "iptables", "-S"); strings.Contains(got, lan) {
			t.Fatalf("chain %s remains:\n%s", lan, got)
		}
	})
}

func fingerprint(t *testing.T, d *Dataplane) model.Digests {
	t.Helper()
	fp, err := d.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func output(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
