package doctor

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/cli"
)

func TestEngineFinding(t *testing.T) {
	for _, c := range []struct {
		eng              cli.Engine
		status, msg, fix string
	}{
		{cli.Engine{Version: "20.10.24+dfsg1"}, statusOK, "Docker 20.10.24+dfsg1 (mynet is tested with 20.10 and newer)", ""},
		{cli.Engine{Version: "28.5.2"}, statusOK, "Docker 28.5.2", ""},
		{cli.Engine{Version: "v29.0.0"}, statusOK, "Docker v29.0.0", ""},
		{cli.Engine{Version: "20.9.0"}, statusWarning, "older than 20.10", "upgrade the Docker engine to 20.10 or newer"},
		{cli.Engine{Version: "19.03.15"}, statusWarning, "Docker 19.03.15 is older than 20.10, the oldest engine mynet is tested with", "upgrade the Docker engine to 20.10 or newer"},
		{cli.Engine{Version: "17.06.2-ce"}, statusWarning, "older than 20.10", "upgrade"},
		{cli.Engine{Version: "1.13.1"}, statusWarning, "older than 20.10", "upgrade"},
		{cli.Engine{Version: "dev"}, statusInfo, "not a version this check can compare", ""},
		{cli.Engine{Err: errors.New("docker version: Cannot connect to the Docker daemon")}, statusSkipped, "unknown: docker version: Cannot connect", ""},
	} {
		check, status, msg, fix := engineFinding(c.eng)
		if check != "engine" || status != c.status || !strings.Contains(msg, c.msg) || !strings.Contains(fix, c.fix) || c.fix == "" && fix != "" {
			t.Errorf("%+v: %s %s %q fix %q; want %s %q fix %q", c.eng, check, status, msg, fix, c.status, c.msg, c.fix)
		}
	}
}

// TestEngineReport: the version is in the JSON report, and a warning is
// printed with its fix but is not a problem.
func TestEngineReport(t *testing.T) {
	env := &cli.Env{Stdout: io.Discard, DockerVersion: func(context.Context) (string, error) { return "19.03.15", nil }}
	d := newDoctor(cli.Target{Instance: "mynet", Socket: "/nonexistent.sock"}, env)
	d.checkEngine(context.Background())
	if d.report.Engine != "19.03.15" || d.report.Problems != 0 || len(d.report.Findings) != 1 {
		t.Fatalf("report: %+v", d.report)
	}
	var out bytes.Buffer
	if err := writeDoctor(&out, d.report); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WARNING  engine  Docker 19.03.15 is older than 20.10", "fix: upgrade the Docker engine to 20.10 or newer", "no problems found"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := cli.WriteJSON(&out, d.report); err != nil || !strings.Contains(out.String(), `"Engine": "19.03.15"`) {
		t.Errorf("doctor JSON: %v\n%s", err, out.String())
	}
}
