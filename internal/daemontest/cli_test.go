package daemontest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/model"
)

// TestCLIAgainstDaemon runs ls, inspect, doctor and a metrics scrape
// against the real daemon in a test namespace, after driving it through
// the engine's calls for a network with a container publishing a port.
func TestCLIAgainstDaemon(t *testing.T) {
	ns := newNS(t)
	metricsSock := filepath.Join(t.TempDir(), "metrics.sock")
	d := &daemon{t: t, ns: ns, name: "mnt-" + randHex(4), dir: t.TempDir(), log: &syncBuffer{}}
	d.sock = filepath.Join(pluginDir, d.name+".sock")
	d.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
		}, DisableKeepAlives: true}}
	d.cmd = exec.Command("ip", "netns", "exec", ns.name, daemonBin, "serve", "--name", d.name,
		"--state-dir", d.dir, "--reconcile-interval", "0", "--metrics-socket", metricsSock)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stop)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if code, _, err := d.call("Plugin.Activate", nil); err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not answer; log:\n%s", d.log)
		}
	}
	s := &script{nid: randHex(32), eid: randHex(32), mac: crashMAC}
	for _, st := range engineSteps {
		out := d.mustCall(st.method, st.body(s))
		if st.after != nil {
			st.after(s, out)
		}
		if st.method == "NetworkDriver.ProgramExternalConnectivity" {
			break
		}
	}
	d.call("NoSuch.Method", nil)

	var out bytes.Buffer
	env := &cli.Env{Stdout: &out}
	if err := cli.RunLs([]string{"--name", d.name, "--format", "json"}, env); err != nil {
		t.Fatal(err)
	}
	var views []struct {
		ID            string
		EndpointCount int
	}
	if err := json.Unmarshal(out.Bytes(), &views); err != nil || len(views) != 1 || views[0].ID != s.nid || views[0].EndpointCount != 1 {
		t.Fatalf("mynet ls --format json: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := cli.RunInspect([]string{"--name", d.name, s.nid[:6]}, env); err != nil {
		t.Fatal(err)
	}
	t.Logf("mynet inspect:\n%s", out.String())
	hostVeth, _ := model.VethNames(s.eid)
	for _, want := range []string{s.eid[:12], strings.Split(s.addr, "/")[0], crashMAC, hostVeth, "0.0.0.0:18080->80/tcp"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("mynet inspect lacks %q:\n%s", want, out.String())
		}
	}

	doctor := func() (string, error) {
		out, err := exec.Command("ip", "netns", "exec", ns.name, daemonBin, "doctor", "--name", d.name).CombinedOutput()
		return string(out), err
	}
	if text, err := doctor(); err != nil || !strings.Contains(text, "no problems found") || !strings.Contains(text, "1 network and 1 endpoint") {
		t.Errorf("doctor on a healthy daemon: %v\n%s", err, text)
	}
	ns.run(t, "ip", "link", "del", hostVeth)
	text, err := doctor()
	t.Logf("mynet doctor after deleting %s: %v\n%s", hostVeth, err, text)
	if err == nil || !strings.Contains(text, "host veth "+hostVeth) || !strings.Contains(text, "fix: kill -HUP") {
		t.Errorf("doctor after deleting the veth: %v\n%s", err, text)
	}

	scrape := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", metricsSock)
		}}}
	resp, err := scrape.Get("http://mynet/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`mynet_requests_total{method="NetworkDriver.CreateNetwork"} 1`,
		`mynet_requests_total{method="IpamDriver.RequestAddress"} 2`,
		`mynet_requests_total{method="other"} 1`,
		`mynet_request_errors_total{code="404",method="other"} 1`,
		`mynet_request_duration_seconds_count{method="NetworkDriver.CreateEndpoint"} 1`,
		`mynet_networks 1`,
		`mynet_endpoints 1`,
		`mynet_pool_addresses_in_use{network_id="` + s.nid[:12] + `",pool="10.77.0.0/24"} 2`,
		`mynet_reconcile_repairs_total 0`,
		`mynet_requests_in_flight 0`,
		`mynet_requests_waiting 0`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if fi, err := os.Stat(metricsSock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("metrics socket: %v, mode %v; want 0660", err, fi.Mode().Perm())
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}
