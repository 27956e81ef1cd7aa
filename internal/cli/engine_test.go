package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEngineUnknown: without an engine, ls and inspect still answer from
// the daemon and say that the engine is unknown, and why.
func TestEngineUnknown(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	for _, c := range []struct {
		name string
		run  func(env *Env) error
		want string
	}{
		{"ls", func(env *Env) error { return RunLs([]string{"--socket", srv.socket}, env) },
			"Engine: unknown (docker version: Cannot connect to the Docker daemon); Docker's names are left out\n\nNETWORK ID"},
		{"inspect", func(env *Env) error { return RunInspect([]string{"--socket", srv.socket, "br-apps"}, env) },
			"Engine:     unknown (docker version: Cannot connect to the Docker daemon); Docker's names are left out\n"},
	} {
		var out bytes.Buffer
		env := testEnv(&out)
		env.DockerNetworks = nil
		env.DockerVersion = func(context.Context) (string, error) {
			return "", errors.New("docker version: Cannot connect to the Docker daemon")
		}
		if err := c.run(env); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !strings.Contains(out.String(), c.want) {
			t.Errorf("%s without an engine lacks %q:\n%s", c.name, c.want, out.String())
		}
	}
}

// TestDockerVersionCLI runs a fake docker CLI: the server's version when
// it answers, the first line of its complaint when it does not.
func TestDockerVersionCLI(t *testing.T) {
	for _, c := range []struct {
		name, script, want, errPart string
	}{
		{"answers", `[ "$*" = "version --format {{.Server.Version}}" ] && echo 20.10.24+dfsg1 && exit 0; exit 3`, "20.10.24+dfsg1", ""},
		{"no engine", `echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2; echo second line >&2; exit 1`,
			"", "docker version: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "docker"), []byte("#!/bin/sh\n"+c.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("PATH", dir)
			v, err := dockerVersionCLI(context.Background())
			if v != c.want || (c.errPart == "") != (err == nil) || err != nil && err.Error() != c.errPart {
				t.Errorf("got %q, %v; want %q, %q", v, err, c.want, c.errPart)
			}
		})
	}
	t.Run("no CLI", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if _, err := dockerVersionCLI(context.Background()); err == nil || !strings.Contains(err.Error(), "no docker CLI") {
			t.Errorf("without a docker CLI: %v", err)
		}
	})
}
