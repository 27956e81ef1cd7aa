// Package cli is the operator CLI: ls, inspect and doctor ask the running
// daemon for its state over its socket (POST /Mynet.State) and never open
// the state database themselves, which the daemon holds locked anyway.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
)

// PluginDir is where dockerd looks for plugin sockets: serve listens on
// PluginDir/<name>.sock.
const PluginDir = "/run/docker/plugins"

// ManagedSocket is the socket name of the managed plugin, inside its
// directory /run/docker/plugins/<plugin ID>/.
const ManagedSocket = "mynet.sock"

// Target is the daemon a command talks to.
type Target struct {
	Socket string
	// Instance is the daemon's --name, which scopes its link tags and
	// chain names (doctor only).
	Instance string
	// InstanceKnown: the instance came from --name or --instance, not a
	// default.
	InstanceKnown bool
	// Restart is the command that restarts the daemon, for fixes.
	Restart string
	// Plugin is the managed plugin's reference, when --plugin chose it.
	Plugin string
	// StateDir is the daemon's --state-dir, which doctor reads when the
	// daemon does not answer.
	StateDir string
}

// ValidName reports whether name may be a daemon's --name: it must be safe
// in a socket path, a link alias and a rule comment.
func ValidName(name string) bool { return validName.MatchString(name) }

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// Flags are the flags every operator command takes.
type Flags struct {
	name, socket, pluginRef, instance string
	// Format is table or json.
	Format string
	// StateDir is doctor's --state-dir.
	StateDir string
}

func (c *Flags) register(fs *flag.FlagSet, doctor bool) {
	fs.StringVar(&c.name, "name", "", "reach the daemon started with serve --name NAME ("+PluginDir+"/NAME.sock; default mynet)")
	fs.StringVar(&c.socket, "socket", "", "reach the daemon listening on this socket")
	fs.StringVar(&c.pluginRef, "plugin", "", "reach the managed plugin NAME:TAG (its socket is "+PluginDir+"/<plugin ID>/"+ManagedSocket+")")
	fs.StringVar(&c.Format, "format", "table", "table or json")
	if doctor {
		fs.StringVar(&c.StateDir, "state-dir", "/var/lib/mynet", "the daemon's --state-dir: read (never changed) when the daemon does not answer, to list the tagged objects it would refuse to start with")
		fs.StringVar(&c.instance, "instance", "", "the daemon's --name, which scopes its link tags and chain names (default: --name, else read from the bridges' tags, else mynet)")
	}
}

// Resolve turns the flags into a target; pluginID looks up a managed
// plugin's ID.
func (c *Flags) Resolve(ctx context.Context, env *Env) (Target, error) {
	if c.Format != "table" && c.Format != "json" {
		return Target{}, fmt.Errorf("--format %q: use table or json", c.Format)
	}
	set := 0
	for _, v := range []string{c.name, c.socket, c.pluginRef} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return Target{}, errors.New("give at most one of --name, --socket and --plugin")
	}
	t := Target{Instance: "mynet", Restart: "systemctl restart mynet (or stop and start mynet serve)", StateDir: c.StateDir}
	switch {
	case c.socket != "":
		t.Socket = c.socket
	case c.pluginRef != "":
		id, err := env.PluginID(ctx, c.pluginRef)
		if err != nil {
			return Target{}, err
		}
		t.Plugin = c.pluginRef
		t.Socket = filepath.Join(PluginDir, id, ManagedSocket)
		t.Restart = "docker plugin disable -f " + c.pluginRef + " && docker plugin enable " + c.pluginRef
	default:
		name := c.name
		if name == "" {
			name = "mynet"
		}
		if !ValidName(name) {
			return Target{}, fmt.Errorf("--name %q is not a valid plugin name", name)
		}
		t.Socket = filepath.Join(PluginDir, name+".sock")
		t.Instance, t.InstanceKnown = name, c.name != ""
		if name != "mynet" {
			t.Restart = "restart the daemon (mynet serve --name " + name + ")"
		}
	}
	if c.instance != "" {
		if !ValidName(c.instance) {
			return Target{}, fmt.Errorf("--instance %q is not a valid plugin name", c.instance)
		}
		t.Instance, t.InstanceKnown = c.instance, true
	}
	return t, nil
}

// ParseCommand parses a subcommand's flags and arguments; done means the
// user asked for -h and the usage has been printed.
func ParseCommand(name, usage string, doctor bool, args []string) (cf Flags, pos []string, done bool, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	cf.register(fs, doctor)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	pos, err = parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return cf, nil, true, nil
	}
	return cf, pos, false, err
}

// parseArgs parses flags that may come before or after the positional
// arguments (mynet inspect NET --format json), and returns the latter.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// Env is what the commands use from outside: the docker CLI (best
// effort, for names), and where output goes. Tests replace its parts.
type Env struct {
	Stdout io.Writer
	// DockerNetworks returns Docker's view of the given network IDs; nil
	// or an error leaves names out.
	DockerNetworks func(ctx context.Context, ids []string) (map[string]DockerNetwork, error)
	PluginID       func(ctx context.Context, ref string) (string, error)
	// DockerVersion returns the engine's version; nil or an error makes
	// the commands say that the engine is unknown.
	DockerVersion func(ctx context.Context) (string, error)
}

func DefaultEnv() *Env {
	return &Env{Stdout: os.Stdout, DockerNetworks: dockerNetworksCLI, PluginID: pluginIDCLI, DockerVersion: dockerVersionCLI}
}

// DockerNetwork is the part of `docker network inspect` the CLI shows.
type DockerNetwork struct {
	ID         string `json:"Id"`
	Name       string
	Containers map[string]struct {
		Name       string
		EndpointID string
	}
}

// ContainerOf names the container of an endpoint, if Docker knows it.
func (d DockerNetwork) ContainerOf(endpointID string) string {
	for _, c := range d.Containers {
		if c.EndpointID == endpointID {
			return c.Name
		}
	}
	return ""
}

// dockerNetworksCLI asks the docker CLI about the networks; it is only for
// names, so a missing CLI or engine is not an error the user sees.
func dockerNetworksCLI(ctx context.Context, ids []string) (map[string]DockerNetwork, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", append([]string{"network", "inspect"}, ids...)...)
	cmd.Stdout = &out
	// Unknown IDs make it exit 1 but it still prints the others.
	runErr := cmd.Run()
	var nets []DockerNetwork
	if err := json.Unmarshal(out.Bytes(), &nets); err != nil {
		return nil, errors.Join(runErr, err)
	}
	m := map[string]DockerNetwork{}
	for _, n := range nets {
		m[n.ID] = n
	}
	return m, nil
}

// pluginIDCLI resolves a managed plugin's ID with the docker CLI.
func pluginIDCLI(ctx context.Context, ref string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "plugin", "inspect", "-f", "{{.Id}}", ref)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("--plugin %s: docker plugin inspect: %v: %s", ref, err, strings.TrimSpace(errOut.String()))
	}
	id := strings.TrimSpace(out.String())
	if model.ValidateID("plugin", id) != nil {
		return "", fmt.Errorf("--plugin %s: docker plugin inspect gave %q, not a plugin ID", ref, id)
	}
	return id, nil
}

// FetchState asks the daemon at socket for its state.
func FetchState(ctx context.Context, socket string) (*plugin.Dump, error) {
	var d plugin.Dump
	if err := call(ctx, socket, "Mynet.State", "the state", &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// call posts an empty request to one of the daemon's methods and decodes
// the answer (what it is, for errors) into out.
func call(ctx context.Context, socket, method, what string, out any) error {
	client := http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			},
		},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mynet/"+method, http.NoBody)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	resp, err := client.Do(req)
	if err != nil {
		return SocketError(socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read %s from %s: %w", what, socket, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("the daemon on %s does not serve /%s: it is not mynet, or an older one", socket, method)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("the daemon on %s answered /%s with %s: %s", socket, method, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode %s from %s: %w", what, socket, err)
	}
	return nil
}

// SocketError explains why a socket did not answer.
func SocketError(socket string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("no mynet daemon on %s: the socket does not exist (is it running? with another --name? for a managed plugin use --plugin NAME:TAG)", socket)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("permission denied on %s: run as root or as a member of the socket's group (serve --socket-group)", socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing listens on %s: a stale socket of a daemon that died; start mynet again", socket)
	}
	return fmt.Errorf("reach the daemon on %s: %w", socket, err)
}
