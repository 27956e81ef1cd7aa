package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

const pluginSocketDir = "/run/docker/plugins"

// instance is a mynet daemon started by the harness, on the host or inside
// a network namespace (ip netns exec replaces itself with mynet, so the pid
// is mynet's).
type instance struct {
	name, stateDir, logPath, netns string
	cmd                            *exec.Cmd
	exited                         chan struct{}
	waitErr                        error
	client                         *pluginClient
}

func (i *instance) socket() string { return filepath.Join(pluginSocketDir, i.name+".sock") }

// startInstance runs `mynet serve` with a state directory and log under
// dir and waits until its socket answers.
func startInstance(ctx context.Context, bin, name, netns, dir string, extra ...string) (*instance, error) {
	i, err := launch(bin, name, netns, dir, name+".log", extra...)
	if err != nil {
		return nil, err
	}
	if err := i.waitReady(ctx, 50*time.Millisecond, 15*time.Second); err != nil {
		return nil, err
	}
	return i, nil
}

// launch starts `mynet serve` with the state directory of name under dir
// (an earlier instance's, if there was one) and its output in logName
// there, without waiting for it.
func launch(bin, name, netns, dir, logName string, extra ...string) (*instance, error) {
	i := &instance{name: name, netns: netns, stateDir: filepath.Join(dir, name+"-state"), logPath: filepath.Join(dir, logName)}
	if err := os.MkdirAll(i.stateDir, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(i.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"serve", "--name", name, "--state-dir", i.stateDir}, extra...)
	if netns != "" {
		i.cmd = exec.Command("ip", append([]string{"netns", "exec", netns, bin}, args...)...)
	} else {
		i.cmd = exec.Command(bin, args...)
	}
	i.cmd.Stdout, i.cmd.Stderr = logf, logf
	// If the harness dies, the daemon goes too rather than serve an
	// orphaned socket. A process group of its own keeps a terminal's
	// Ctrl-C from reaching it: the harness still needs it to remove the
	// networks that dockerd holds on it, and stops it last.
	i.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := i.cmd.Start(); err != nil {
		return nil, err
	}
	i.exited = make(chan struct{})
	go func() { i.waitErr = i.cmd.Wait(); close(i.exited) }()
	i.client = newPluginClient(i.socket())
	return i, nil
}

// waitReady asks Plugin.Activate every poll until the socket answers; it
// stops the instance if that takes longer than timeout.
func (i *instance) waitReady(ctx context.Context, poll, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var resp struct{ Implements []string }
		err := i.client.call(ctx, "Plugin.Activate", nil, &resp)
		if err == nil {
			return nil
		}
		select {
		case <-i.exited:
			return fmt.Errorf("mynet exited before serving (%v); log %s:\n%s", i.waitErr, i.logPath, i.logTail(20))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			i.stop(context.Background())
			return fmt.Errorf("mynet socket %s not ready: %v; log:\n%s", i.socket(), err, i.logTail(20))
		}
		time.Sleep(poll)
	}
}

func (i *instance) pid() int { return i.cmd.Process.Pid }

func (i *instance) running() bool {
	select {
	case <-i.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM (SIGKILL after 10 s) and removes the socket.
func (i *instance) stop(ctx context.Context) error { return i.stopWithin(10 * time.Second) }

// stopWithin is stop with grace instead of 10 s: mynet finishes a
// reconcile pass under way before it exits.
func (i *instance) stopWithin(grace time.Duration) error {
	var err error
	if i.cmd != nil && i.running() {
		_ = i.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-i.exited:
		case <-time.After(grace):
			_ = i.cmd.Process.Kill()
			<-i.exited
			err = fmt.Errorf("mynet ignored SIGTERM for %v; killed", grace)
		}
	}
	i.client.close()
	if rmErr := os.Remove(i.socket()); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}

func (i *instance) logTail(n int) string {
	raw, err := os.ReadFile(i.logPath)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(bytes.TrimRight(raw, "\n")), n)
}

// pluginClient speaks the plugin protocol as the engine does: JSON POSTs on
// the unix socket over kept-alive connections.
type pluginClient struct {
	http *http.Client
	tr   *http.Transport
}

func newPluginClient(sock string) *pluginClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     time.Minute,
	}
	return &pluginClient{http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}, tr: tr}
}

func (c *pluginClient) close() { c.tr.CloseIdleConnections() }

// call posts req (nil: an empty body) to /method and decodes the answer
// into resp (nil: discard). A non-200 answer is an error carrying Err.
func (c *pluginClient) call(ctx context.Context, method string, req, resp any) error {
	var body io.Reader = http.NoBody
	if req != nil {
		raw, err := json.Marshal(req)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+method, body)
	if err != nil {
		return err
	}
	hr.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	hr.Header.Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
	r, err := c.http.Do(hr)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	defer r.Body.Close()
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if r.StatusCode != http.StatusOK {
		var e struct{ Err string }
		_ = json.Unmarshal(raw, &e)
		if e.Err == "" {
			e.Err = string(bytes.TrimSpace(raw))
		}
		return fmt.Errorf("%s: HTTP %d: %s", method, r.StatusCode, e.Err)
	}
	if resp != nil {
		if err := json.Unmarshal(raw, resp); err != nil {
			return fmt.Errorf("%s: decode %q: %w", method, raw, err)
		}
	}
	return nil
}
