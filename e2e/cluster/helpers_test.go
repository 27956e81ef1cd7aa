package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// cmdTimeout bounds every command. An engine looking for a plugin it
// cannot find retries for about 15 s, so this leaves room for that.
const cmdTimeout = 2 * time.Minute

// testImage holds only busybox and its applets, imported into every host
// (each has a data root of its own), since no registry is reachable.
const testImage = "mynet-cluster-e2e-busybox:1"

// run runs a command and returns its combined output, trimmed; the error
// names the command and carries the output.
func run(name string, args ...string) (string, error) {
	return runEnv(nil, nil, name, args...)
}

func runEnv(env []string, stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	cmd.WaitDelay = 5 * time.Second
	raw, err := cmd.CombinedOutput()
	out := strings.TrimSpace(string(raw))
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", cmdTimeout)
	}
	if err != nil {
		return out, fmt.Errorf("`%s %s`: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// dockerErr runs the docker CLI against h's engine.
func (h *host) dockerErr(args ...string) (string, error) {
	return runEnv([]string{"DOCKER_HOST=" + h.dockerHost}, nil, "docker", args...)
}

// docker runs the docker CLI against h's engine and fails the test if it
// fails.
func (h *host) docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.dockerErr(args...)
	if err != nil {
		t.Fatalf("host %s: %v", h.letter, err)
	}
	return out
}

// hasLink reports whether network namespace ns ("" for this one) has a
// link named name.
func hasLink(t *testing.T, ns, name string) bool {
	t.Helper()
	args := []string{"-o", "link", "show"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	out, err := run("ip", args...)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		// "4: mn-1f3cdc810f18: <...": the name ends at ':' or '@'.
		f := strings.Fields(l)
		if len(f) > 1 && strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":") == name {
			return true
		}
	}
	return false
}

// etcdctl runs the harness's etcdctl in h's namespace against the
// cluster's etcd.
func (h *host) etcdctl(t *testing.T, args ...string) string {
	t.Helper()
	full := append([]string{"netns", "exec", h.netns, etcdctl, "--endpoints=" + env.etcd.endpoint,
		"--dial-timeout=2s", "--command-timeout=5s"}, args...)
	out, err := runEnv([]string{"ETCDCTL_API=3"}, nil, "ip", full...)
	if err != nil {
		t.Fatalf("host %s: %v", h.letter, err)
	}
	return out
}

// importImage imports testImage into every host.
func importImage() error {
	for _, h := range env.hosts {
		if err := importImageTo(h); err != nil {
			return err
		}
	}
	return nil
}

// importImageTo imports testImage into h.
func importImageTo(h *host) error {
	rootfs, err := busyboxRootfs()
	if err != nil {
		return err
	}
	_, err = runEnv([]string{"DOCKER_HOST=" + h.dockerHost}, bytes.NewReader(rootfs),
		"docker", "import", "--change", "ENV PATH=/bin", "-", testImage)
	if err != nil {
		return fmt.Errorf("host %s: %w", h.letter, err)
	}
	return nil
}

// busyboxRootfs is the image's root filesystem as a tar stream: busybox
// and one symlink per applet.
func busyboxRootfs() ([]byte, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, err
	}
	list, err := run("/bin/busybox", "--list")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	headers := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: now},
		{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: now},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: now},
	}
	for _, applet := range strings.Fields(list) {
		if applet != "busybox" {
			headers = append(headers, &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet,
				Linkname: "busybox", Mode: 0o777, ModTime: now})
		}
	}
	for _, h := range headers {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Name == "bin/busybox" {
			if _, err := tw.Write(bin); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func requireCluster(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}
