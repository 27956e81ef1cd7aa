package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// RunLs is `mynet ls`.
func RunLs(args []string, env *Env) error {
	cf, pos, done, err := ParseCommand("ls", "usage: mynet ls [--name NAME | --socket PATH | --plugin NAME:TAG] [--format table|json]\n\nLists the daemon's networks.\n\n", false, args)
	if done || err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("ls takes no arguments, got %q", pos)
	}
	views, eng, err := loadViews(cf, env)
	if err != nil {
		return err
	}
	if cf.Format == "json" {
		// An array, kept as it was for scripts: the engine is in
		// inspect's and doctor's JSON.
		for i := range views {
			views[i].Endpoints = nil // inspect shows them
		}
		return WriteJSON(env.Stdout, views)
	}
	fmt.Fprintf(env.Stdout, "Engine: %s\n\n", eng)
	return writeLs(env.Stdout, views)
}

// loadViews reaches the daemon the flags name and returns its networks as
// ls and inspect show them, and the engine that named them.
func loadViews(cf Flags, env *Env) ([]networkView, Engine, error) {
	ctx := context.Background()
	t, err := cf.Resolve(ctx, env)
	if err != nil {
		return nil, Engine{}, err
	}
	d, err := FetchState(ctx, t.Socket)
	if err != nil {
		return nil, Engine{}, err
	}
	return networkViews(ctx, d, env), AskEngine(ctx, env), nil
}

// RunInspect is `mynet inspect NETWORK`.
func RunInspect(args []string, env *Env) error {
	cf, pos, done, err := ParseCommand("inspect", "usage: mynet inspect [--name NAME | --socket PATH | --plugin NAME:TAG] [--format table|json] NETWORK\n\nShows a network's endpoints. NETWORK is its ID, a unique prefix of it, its bridge, or its Docker name.\n\n", false, args)
	if done || err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("inspect takes one network (mynet inspect [flags] NETWORK), got %d arguments", len(pos))
	}
	views, eng, err := loadViews(cf, env)
	if err != nil {
		return err
	}
	v, err := findNetwork(views, pos[0])
	if err != nil {
		return err
	}
	v.Engine = eng.Version
	if cf.Format == "json" {
		return WriteJSON(env.Stdout, v)
	}
	return writeInspect(env.Stdout, v, eng)
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
	// Engine is the Docker engine's version (inspect only), when it
	// answered.
	Engine string `json:",omitempty"`
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
func networkViews(ctx context.Context, d *plugin.Dump, env *Env) []networkView {
	var ids []string
	for _, n := range d.Networks {
		ids = append(ids, n.ID)
	}
	var docker map[string]DockerNetwork
	if env.DockerNetworks != nil {
		docker, _ = env.DockerNetworks(ctx, ids)
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
				ID: e.ID, Container: dn.ContainerOf(e.ID), IPv4: e.IPv4, IPv6: e.IPv6, MAC: e.MAC,
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

func WriteJSON(w io.Writer, v any) error {
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
			id, OrDash(v.Name), v.Bridge, subnetsText(v, false), yesNo(v.ICC), yesNo(v.Masquerade), yesNo(v.Internal),
			mtuText(v.MTU), hostBindingText(v.HostBinding), v.EndpointCount)
	}
	return tw.Flush()
}

func writeInspect(w io.Writer, v networkView, eng Engine) error {
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
	fmt.Fprintf(tw, "Engine:\t%s\n", eng)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, OrDash(e.Container), OrDash(e.IPv4), OrDash(e.IPv6),
			OrDash(e.MAC), OrDash(e.HostVeth), OrDash(strings.Join(ports, ", ")))
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

func OrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
