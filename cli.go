package main

// The operator CLI: ls, inspect and doctor ask the running daemon for its
// state over its socket (POST /Mynet.State) and never open the state
// database themselves, which the daemon holds locked anyway.

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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// managedSocket is the socket name of the managed plugin, inside its
// directory /run/docker/plugins/<plugin ID>/.
const managedSocket = "mynet.sock"

// target is the daemon a command talks to.
type target struct {
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

// cliFlags are the flags every operator command takes.
type cliFlags struct {
	name, socket, pluginRef, instance, format string
	stateDir                                  string
}

func (c *cliFlags) register(fs *flag.FlagSet, doctor bool) {
	fs.StringVar(&c.name, "name", "", "reach the daemon started with serve --name NAME ("+pluginDir+"/NAME.sock; default mynet)")
	fs.StringVar(&c.socket, "socket", "", "reach the daemon listening on this socket")
	fs.StringVar(&c.pluginRef, "plugin", "", "reach the managed plugin NAME:TAG (its socket is "+pluginDir+"/<plugin ID>/"+managedSocket+")")
	fs.StringVar(&c.format, "format", "table", "table or json")
	if doctor {
		fs.StringVar(&c.stateDir, "state-dir", "/var/lib/mynet", "the daemon's --state-dir: read (never changed) when the daemon does not answer, to list the tagged objects it would refuse to start with")
		fs.StringVar(&c.instance, "instance", "", "the daemon's --name, which scopes its link tags and chain names (default: --name, else read from the bridges' tags, else mynet)")
	}
}

// resolve turns the flags into a target; pluginID looks up a managed
// plugin's ID.
func (c *cliFlags) resolve(ctx context.Context, env *cliEnv) (target, error) {
	if c.format != "table" && c.format != "json" {
		return target{}, fmt.Errorf("--format %q: use table or json", c.format)
	}
	set := 0
	for _, v := range []string{c.name, c.socket, c.pluginRef} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return target{}, errors.New("give at most one of --name, --socket and --plugin")
	}
	t := target{Instance: "mynet", Restart: "systemctl restart mynet (or stop and start mynet serve)", StateDir: c.stateDir}
	switch {
	case c.socket != "":
		t.Socket = c.socket
	case c.pluginRef != "":
		id, err := env.pluginID(ctx, c.pluginRef)
		if err != nil {
			return target{}, err
		}
		t.Plugin = c.pluginRef
		t.Socket = filepath.Join(pluginDir, id, managedSocket)
		t.Restart = "docker plugin disable -f " + c.pluginRef + " && docker plugin enable " + c.pluginRef
	default:
		name := c.name
		if name == "" {
			name = "mynet"
		}
		if !validName.MatchString(name) {
			return target{}, fmt.Errorf("--name %q is not a valid plugin name", name)
		}
		t.Socket = filepath.Join(pluginDir, name+".sock")
		t.Instance, t.InstanceKnown = name, c.name != ""
		if name != "mynet" {
			t.Restart = "restart the daemon (mynet serve --name " + name + ")"
		}
	}
	if c.instance != "" {
		if !validName.MatchString(c.instance) {
			return target{}, fmt.Errorf("--instance %q is not a valid plugin name", c.instance)
		}
		t.Instance, t.InstanceKnown = c.instance, true
	}
	return t, nil
}

// parseCommand parses a subcommand's flags and arguments; done means the
// user asked for -h and the usage has been printed.
func parseCommand(name, usage string, doctor bool, args []string) (cf cliFlags, pos []string, done bool, err error) {
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

// cliEnv is what the commands use from outside: the docker CLI (best
// effort, for names), and where output goes. Tests replace its parts.
type cliEnv struct {
	stdout io.Writer
	// dockerNetworks returns Docker's view of the given network IDs; nil
	// or an error leaves names out.
	dockerNetworks func(ctx context.Context, ids []string) (map[string]dockerNetwork, error)
	pluginID       func(ctx context.Context, ref string) (string, error)
}

func defaultEnv() *cliEnv {
	return &cliEnv{stdout: os.Stdout, dockerNetworks: dockerNetworksCLI, pluginID: pluginIDCLI}
}

// dockerNetwork is the part of `docker network inspect` the CLI shows.
type dockerNetwork struct {
	ID         string `json:"Id"`
	Name       string
	Containers map[string]struct {
		Name       string
		EndpointID string
	}
}

// containerOf names the container of an endpoint, if Docker knows it.
func (d dockerNetwork) containerOf(endpointID string) string {
	for _, c := range d.Containers {
		if c.EndpointID == endpointID {
			return c.Name
		}
	}
	return ""
}

// dockerNetworksCLI asks the docker CLI about the networks; it is only for
// names, so a missing CLI or engine is not an error the user sees.
func dockerNetworksCLI(ctx context.Context, ids []string) (map[string]dockerNetwork, error) {
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
	var nets []dockerNetwork
	if err := json.Unmarshal(out.Bytes(), &nets); err != nil {
		return nil, errors.Join(runErr, err)
	}
	m := map[string]dockerNetwork{}
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

// fetchState asks the daemon at socket for its state.
func fetchState(ctx context.Context, socket string) (*plugin.Dump, error) {
	client := http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			},
		},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mynet/Mynet.State", http.NoBody)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, socketError(socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read the state from %s: %w", socket, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("the daemon on %s does not serve /Mynet.State: it is not mynet, or an older one", socket)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("the daemon on %s answered /Mynet.State with %s: %s", socket, resp.Status, bytes.TrimSpace(body))
	}
	var d plugin.Dump
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("decode the state from %s: %w", socket, err)
	}
	return &d, nil
}

// socketError explains why a socket did not answer.
func socketError(socket string, err error) error {
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

// runLs is `mynet ls`.
func runLs(args []string, env *cliEnv) error {
	cf, pos, done, err := parseCommand("ls", "usage: mynet ls [--name NAME | --socket PATH | --plugin NAME:TAG] [--format table|json]\n\nLists the daemon's networks.\n\n", false, args)
	if done || err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("ls takes no arguments, got %q", pos)
	}
	views, err := loadViews(cf, env)
	if err != nil {
		return err
	}
	if cf.format == "json" {
		for i := range views {
			views[i].Endpoints = nil // inspect shows them
		}
		return writeJSON(env.stdout, views)
	}
	return writeLs(env.stdout, views)
}

// loadViews reaches the daemon the flags name and returns its networks as
// ls and inspect show them.
func loadViews(cf cliFlags, env *cliEnv) ([]networkView, error) {
	ctx := context.Background()
	t, err := cf.resolve(ctx, env)
	if err != nil {
		return nil, err
	}
	d, err := fetchState(ctx, t.Socket)
	if err != nil {
		return nil, err
	}
	return networkViews(ctx, d, env), nil
}

// runInspect is `mynet inspect NETWORK`.
func runInspect(args []string, env *cliEnv) error {
	cf, pos, done, err := parseCommand("inspect", "usage: mynet inspect [--name NAME | --socket PATH | --plugin NAME:TAG] [--format table|json] NETWORK\n\nShows a network's endpoints. NETWORK is its ID, a unique prefix of it, its bridge, or its Docker name.\n\n", false, args)
	if done || err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("inspect takes one network (mynet inspect [flags] NETWORK), got %d arguments", len(pos))
	}
	views, err := loadViews(cf, env)
	if err != nil {
		return err
	}
	v, err := findNetwork(views, pos[0])
	if err != nil {
		return err
	}
	if cf.format == "json" {
		return writeJSON(env.stdout, v)
	}
	return writeInspect(env.stdout, v)
}

// networkView is a network as ls and inspect show it.
type networkView struct {
	ID   string
	Name string `json:",omitempty"` // Docker's name, when the engine answered
	// Bridge and the options, as the daemon applies them.
	Bridge      string
	IPv4        []state.Subnet `json:",omitempty"`
	IPv6        []state.Subnet `json:",omitempty"`
	ICC         bool
	Masquerade  bool
	Internal    bool
	MTU         int    `json:",omitempty"` // 0: the kernel's default, 1500
	HostBinding string `json:",omitempty"` // empty: all addresses
	Pending     bool   `json:",omitempty"`
	Created     time.Time

	EndpointCount int
	Endpoints     []endpointView `json:",omitempty"`
}

// endpointView is one container attachment.
type endpointView struct {
	ID            string
	Container     string `json:",omitempty"` // Docker's name, when the engine answered
	IPv4          string `json:",omitempty"`
	IPv6          string `json:",omitempty"`
	MAC           string
	HostVeth      string
	ContainerVeth string
	Ports         []state.Port `json:",omitempty"`
	Pending       bool         `json:",omitempty"`
	Created       time.Time
}

// networkViews joins networks with their endpoints (and Docker's names,
// when the engine answers), sorted by name, then ID.
func networkViews(ctx context.Context, d *plugin.Dump, env *cliEnv) []networkView {
	var ids []string
	for _, n := range d.Networks {
		ids = append(ids, n.ID)
	}
	var docker map[string]dockerNetwork
	if env.dockerNetworks != nil {
		docker, _ = env.dockerNetworks(ctx, ids)
	}
	byNet := map[string][]state.Endpoint{}
	for _, e := range d.Endpoints {
		byNet[e.NetworkID] = append(byNet[e.NetworkID], e)
	}
	views := make([]networkView, 0, len(d.Networks))
	for _, n := range d.Networks {
		dn := docker[n.ID]
		v := networkView{
			ID: n.ID, Name: dn.Name, Bridge: n.Bridge, IPv4: n.IPv4, IPv6: n.IPv6,
			ICC: n.ICC, Masquerade: n.Masquerade, Internal: n.Internal, MTU: n.MTU,
			HostBinding: n.HostBinding, Pending: n.Pending, Created: n.Created,
			EndpointCount: len(byNet[n.ID]),
		}
		for _, e := range byNet[n.ID] {
			v.Endpoints = append(v.Endpoints, endpointView{
				ID: e.ID, Container: dn.containerOf(e.ID), IPv4: e.IPv4, IPv6: e.IPv6, MAC: e.MAC,
				HostVeth: e.HostVeth, ContainerVeth: e.ContainerVeth, Ports: e.Ports, Pending: e.Pending, Created: e.Created,
			})
		}
		slices.SortFunc(v.Endpoints, func(a, b endpointView) int {
			return cmpStrings(a.Container, b.Container, a.IPv4, b.IPv4, a.ID, b.ID)
		})
		views = append(views, v)
	}
	// Named networks first, by name; then the rest, by ID.
	slices.SortFunc(views, func(a, b networkView) int {
		return cmpStrings(yesNo(a.Name == ""), yesNo(b.Name == ""), a.Name, b.Name, a.ID, b.ID)
	})
	return views
}

// cmpStrings compares pairs in order: a0 with b0, then a1 with b1, ...
func cmpStrings(pairs ...string) int {
	for i := 0; i+1 < len(pairs); i += 2 {
		if c := strings.Compare(pairs[i], pairs[i+1]); c != 0 {
			return c
		}
	}
	return 0
}

// findNetwork resolves a full ID, a unique ID prefix, a bridge name or a
// Docker name.
func findNetwork(views []networkView, ref string) (networkView, error) {
	if ref == "" {
		return networkView{}, errors.New("empty network reference")
	}
	for _, v := range views {
		if v.ID == ref || v.Bridge == ref {
			return v, nil
		}
	}
	var byPrefix, byName []networkView
	for _, v := range views {
		if strings.HasPrefix(v.ID, ref) {
			byPrefix = append(byPrefix, v)
		}
		if v.Name == ref {
			byName = append(byName, v)
		}
	}
	switch {
	case len(byName) == 1:
		return byName[0], nil
	case len(byPrefix) == 1:
		return byPrefix[0], nil
	case len(byPrefix) > 1:
		var ids []string
		for _, v := range byPrefix {
			ids = append(ids, model.Short(v.ID))
		}
		return networkView{}, fmt.Errorf("%q matches %d networks (%s): give more of the ID", ref, len(byPrefix), strings.Join(ids, ", "))
	case len(byName) > 1:
		return networkView{}, fmt.Errorf("%q names %d networks: give the ID", ref, len(byName))
	}
	return networkView{}, fmt.Errorf("no mynet network %q: give its ID, a unique prefix of it, its bridge or its Docker name (mynet ls lists them)", ref)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeLs(w io.Writer, views []networkView) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NETWORK ID\tNAME\tBRIDGE\tSUBNETS\tICC\tMASQUERADE\tINTERNAL\tMTU\tHOST IP\tENDPOINTS")
	for _, v := range views {
		id := model.Short(v.ID)
		if v.Pending {
			id += " (pending)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n",
			id, orDash(v.Name), v.Bridge, subnetsText(v, false), yesNo(v.ICC), yesNo(v.Masquerade), yesNo(v.Internal),
			mtuText(v.MTU), hostBindingText(v.HostBinding), v.EndpointCount)
	}
	return tw.Flush()
}

func writeInspect(w io.Writer, v networkView) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	name := v.ID
	if v.Name != "" {
		name += " (" + v.Name + ")"
	}
	if v.Pending {
		name += " pending: its creation has not finished"
	}
	fmt.Fprintf(tw, "Network:\t%s\n", name)
	fmt.Fprintf(tw, "Bridge:\t%s\n", v.Bridge)
	fmt.Fprintf(tw, "Subnets:\t%s\n", subnetsText(v, true))
	fmt.Fprintf(tw, "Options:\ticc=%s masquerade=%s internal=%s mtu=%s host_ip=%s\n",
		yesNo(v.ICC), yesNo(v.Masquerade), yesNo(v.Internal), mtuText(v.MTU), hostBindingText(v.HostBinding))
	fmt.Fprintf(tw, "Created:\t%s\n", v.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "Endpoints:\t%d\n", v.EndpointCount)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Endpoints) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tCONTAINER\tIPV4\tIPV6\tMAC\tHOST VETH\tPORTS")
	for _, e := range v.Endpoints {
		id := model.Short(e.ID)
		if e.Pending {
			id += " (pending)"
		}
		var ports []string
		for _, p := range e.Ports {
			ports = append(ports, portText(p))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, orDash(e.Container), orDash(e.IPv4), orDash(e.IPv6),
			orDash(e.MAC), orDash(e.HostVeth), orDash(strings.Join(ports, ", ")))
	}
	return tw.Flush()
}

// subnetsText lists the subnets, with their gateways when long is set.
func subnetsText(v networkView, long bool) string {
	var out []string
	for _, s := range append(slices.Clone(v.IPv4), v.IPv6...) {
		t := s.Pool
		if long && s.Gateway != "" {
			gw, _, _ := strings.Cut(s.Gateway, "/")
			t += " gateway " + gw
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return "-"
	}
	sep := ","
	if long {
		sep = ", "
	}
	return strings.Join(out, sep)
}

// portText renders a published port the way docker ps does:
// 0.0.0.0:8080->80/tcp, [::]:8000-8001->80-81/udp.
func portText(p state.Port) string {
	host := p.HostIP
	if host == "" {
		host = "0.0.0.0"
		if strings.Contains(p.ContainerIP, ":") {
			host = "::"
		}
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	hp, cp := strconv.Itoa(int(p.HostPort)), strconv.Itoa(int(p.Port))
	if p.HostPortEnd > p.HostPort {
		hp += "-" + strconv.Itoa(int(p.HostPortEnd))
		cp += "-" + strconv.Itoa(int(p.Port)+int(p.HostPortEnd-p.HostPort))
	}
	return host + ":" + hp + "->" + cp + "/" + p.Proto
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func mtuText(mtu int) string {
	if mtu == 0 {
		return "1500"
	}
	return strconv.Itoa(mtu)
}

func hostBindingText(s string) string {
	if s == "" {
		return "all"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
