package e2e

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
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	pluginSocketDir = "/run/docker/plugins"
	readyTimeout    = 10 * time.Second
	stopTimeout     = 10 * time.Second
)

// plugin is the mynet daemon under test, run as a legacy (v1) plugin that
// dockerd finds through its socket in /run/docker/plugins.
type plugin struct {
	bin, name, stateDir, logPath string

	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been reaped
	waitErr error         // cmd.Wait's result, valid after exited is closed
}

func (p *plugin) socketPath() string {
	return filepath.Join(pluginSocketDir, p.name+".sock")
}

// start runs the daemon, appending its output to the log, and waits until its
// socket answers Plugin.Activate.
func (p *plugin) start() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(p.bin, append([]string{"serve", "--name", p.name, "--state-dir", p.stateDir, "--log-level", "debug"}, firewallArgs()...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies (say, on a go test -timeout panic), take the
	// daemon with it rather than leave it serving an orphaned socket.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		p.waitErr = cmd.Wait()
		close(exited)
	}(p.exited)
	return p.waitReady()
}

func (p *plugin) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	for {
		err := p.activate()
		if err == nil {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("plugin exited before serving (%v); log tail:\n%s", p.waitErr, p.logTail(30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("plugin socket %s not ready after %v: %v; log tail:\n%s", p.socketPath(), readyTimeout, err, p.logTail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// running reports whether the process started last is still alive.
func (p *plugin) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// restart simulates a crash: SIGKILL, so the daemon gets no chance to clean
// up (its socket file stays behind), then the same command line again.
func (p *plugin) restart() error {
	p.note("killing the plugin with SIGKILL and starting it again")
	if p.running() {
		if err := p.cmd.Process.Kill(); err != nil {
			return err
		}
		<-p.exited
	}
	return p.start()
}

// stop ends the daemon with SIGTERM (SIGKILL after stopTimeout) and removes
// its socket, so dockerd does not keep retrying a dead path. It fails only if
// the daemon ignored SIGTERM; an unclean exit is logged.
func (p *plugin) stop() error {
	var err error
	if p.running() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			if p.waitErr != nil {
				fmt.Fprintf(os.Stderr, "e2e: warning: plugin exited uncleanly on SIGTERM: %v\n", p.waitErr)
			}
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
			err = fmt.Errorf("plugin still running %v after SIGTERM; killed it", stopTimeout)
		}
	}
	if rmErr := os.Remove(p.socketPath()); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return errors.Join(err, os.RemoveAll(p.stateDir))
}

// note writes a marker into the plugin log so that its lines can be matched
// with the scenario that caused them.
func (p *plugin) note(format string, args ...any) {
	f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "=== e2e %s: %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
}

func (p *plugin) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// activate performs the engine's handshake and checks both interfaces.
func (p *plugin) activate() error {
	var resp struct{ Implements []string }
	if err := p.call("Plugin.Activate", &resp); err != nil {
		return err
	}
	for _, want := range []string{"NetworkDriver", "IpamDriver"} {
		if !slices.Contains(resp.Implements, want) {
			return fmt.Errorf("Plugin.Activate implements %q, missing %s", resp.Implements, want)
		}
	}
	return nil
}

// pluginState is the answer of mynet's debug endpoint /Mynet.State.
type pluginState struct {
	Networks, Endpoints, Pools []json.RawMessage
}

func (p *plugin) state() (pluginState, error) {
	var st pluginState
	err := p.call("Mynet.State", &st)
	return st, err
}

// call POSTs an empty body to /method on the plugin socket, the way the
// engine calls argument-less methods, and decodes the JSON answer.
func (p *plugin) call(method string, out any) error {
	client := http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", p.socketPath())
			},
		},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, "http://plugin/"+method, http.NoBody)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/%s: HTTP %s: %s", method, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("/%s: decoding %q: %w", method, body, err)
	}
	return nil
}

// statePort is one published port of an endpoint record in /Mynet.State.
type statePort struct {
	Proto                       string
	HostIP                      string
	HostPort, HostPortEnd, Port uint16
	ContainerIP                 string
}

// endpointPorts returns the published ports of the plugin's record of
// endpoint id; found is false when there is no such record.
func (p *plugin) endpointPorts(id string) (ports []statePort, found bool, err error) {
	st, err := p.state()
	if err != nil {
		return nil, false, err
	}
	for _, raw := range st.Endpoints {
		var ep struct {
			ID    string
			Ports []statePort
		}
		if err := json.Unmarshal(raw, &ep); err != nil {
			return nil, false, fmt.Errorf("endpoint record %s: %w", raw, err)
		}
		if ep.ID == id {
			return ep.Ports, true, nil
		}
	}
	return nil, false, nil
}
