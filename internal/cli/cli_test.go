package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

const (
	cliNet1 = "3f1a2b3c4d5e11111111111111111111111111111111111111111111111111aa"
	cliNet2 = "3f1a99999999222222222222222222222222222222222222222222222222222b"
	cliNet3 = "77aa00000000333333333333333333333333333333333333333333333333333c"
	cliEp1  = "e1e1e1e1e1e1000000000000000000000000000000000000000000000000000a"
	cliEp2  = "e2e2e2e2e2e2000000000000000000000000000000000000000000000000000b"
	cliEp3  = "e3e3e3e3e3e3000000000000000000000000000000000000000000000000000c"
)

var cliCreated = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// cannedDump is a daemon's state: an ordinary network with two containers
// (one publishing ports, one chosen by mynet), an internal IPv6 network
// with a custom bridge and MTU, and an empty one.
func cannedDump() *plugin.Dump {
	return &plugin.Dump{
		Networks: []state.Network{
			{ID: cliNet1, Bridge: "mn-3f1a2b3c4d5e", IPv4: []state.Subnet{{Pool: "10.123.0.0/24", Gateway: "10.123.0.1/24"}},
				ICC: true, Masquerade: true, Created: cliCreated},
			{ID: cliNet2, Bridge: "br-apps", MTU: 1400, Internal: true, HostBinding: "127.0.0.1",
				IPv4: []state.Subnet{{Pool: "10.124.0.0/24", Gateway: "10.124.0.1/24"}},
				IPv6: []state.Subnet{{Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}}, Created: cliCreated},
			{ID: cliNet3, Bridge: "mn-77aa00000000", IPv4: []state.Subnet{{Pool: "10.125.0.0/24"}}, ICC: true, Created: cliCreated},
		},
		Endpoints: []state.Endpoint{
			{NetworkID: cliNet1, ID: cliEp1, HostVeth: "mnve1e1e1e1e1e1", ContainerVeth: "mnce1e1e1e1e1e1", MAC: "02:42:0a:7b:00:02",
				IPv4: "10.123.0.2/24", Created: cliCreated,
				Ports: []state.Port{
					{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: "10.123.0.2", Port: 80},
					{Proto: "udp", HostIP: "127.0.0.1", HostPort: 32768, HostPortEnd: 32768, ContainerIP: "10.123.0.2", Port: 53},
				}},
			{NetworkID: cliNet1, ID: cliEp2, HostVeth: "mnve2e2e2e2e2e2", ContainerVeth: "mnce2e2e2e2e2e2", MAC: "02:42:0a:7b:00:03",
				IPv4: "10.123.0.3/24", Created: cliCreated},
			{NetworkID: cliNet2, ID: cliEp3, HostVeth: "mnve3e3e3e3e3e3", ContainerVeth: "mnce3e3e3e3e3e3", MAC: "02:42:0a:7c:00:02",
				IPv4: "10.124.0.2/24", IPv6: "fd00:1::2/64", Created: cliCreated},
		},
		Pools: []state.Pool{{ID: "10.123.0.0/24", Pool: "10.123.0.0/24", NetworkID: cliNet1}},
	}
}

// stateServer serves /Mynet.State on a unix socket in a temporary
// directory, as the daemon does; the answer can be changed while it runs.
type stateServer struct {
	socket string
	dump   atomic.Pointer[plugin.Dump]
	calls  atomic.Int32
}

func newStateServer(t *testing.T, d *plugin.Dump) *stateServer {
	t.Helper()
	s := &stateServer{socket: filepath.Join(t.TempDir(), "mynet.sock")}
	s.dump.Store(d)
	l, err := net.Listen("unix", s.socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /Mynet.State", func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1+json")
		json.NewEncoder(w).Encode(s.dump.Load())
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return s
}

// testEnv captures Stdout and knows Docker's names of two networks.
func testEnv(out *bytes.Buffer) *Env {
	return &Env{
		Stdout: out,
		DockerNetworks: func(_ context.Context, ids []string) (map[string]DockerNetwork, error) {
			n1 := DockerNetwork{ID: cliNet1, Name: "appnet"}
			n1.Containers = map[string]struct{ Name, EndpointID string }{
				"c1": {Name: "web", EndpointID: cliEp1},
				"c2": {Name: "client", EndpointID: cliEp2},
			}
			return map[string]DockerNetwork{cliNet1: n1, cliNet2: {ID: cliNet2, Name: "apps"}}, nil
		},
		PluginID: func(_ context.Context, ref string) (string, error) {
			if ref == "mynet:1.0" {
				return strings.Repeat("ab", 32), nil
			}
			return "", errors.New("no such plugin")
		},
		DockerVersion: func(context.Context) (string, error) { return "28.5.2", nil },
	}
}

func TestLsTable(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	var out bytes.Buffer
	if err := RunLs([]string{"--socket", srv.socket}, testEnv(&out)); err != nil {
		t.Fatal(err)
	}
	want := `Engine: Docker 28.5.2

NETWORK ID    NAME    BRIDGE           SUBNETS                    ICC  MASQUERADE  INTERNAL  MTU   HOST IP    ENDPOINTS
3f1a2b3c4d5e  appnet  mn-3f1a2b3c4d5e  10.123.0.0/24              yes  yes         no        1500  all        2
3f1a99999999  apps    br-apps          10.124.0.0/24,fd00:1::/64  no   no          yes       1400  127.0.0.1  1
77aa00000000  -       mn-77aa00000000  10.125.0.0/24              yes  no          no        1500  all        0
`
	if out.String() != want {
		t.Errorf("mynet ls:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestLsJSON(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	var out bytes.Buffer
	if err := RunLs([]string{"--format", "json", "--socket", srv.socket}, testEnv(&out)); err != nil {
		t.Fatal(err)
	}
	var views []networkView
	if err := json.Unmarshal(out.Bytes(), &views); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if len(views) != 3 {
		t.Fatalf("got %d networks", len(views))
	}
	if views[0].Name != "appnet" || views[2].Name != "" || len(views[0].Endpoints) != 0 {
		t.Errorf("ls --format json: want appnet, apps, the unnamed one, without endpoint lists: %+v", views)
	}
	v := views[1]
	if v.ID != cliNet2 || v.Name != "apps" || v.Bridge != "br-apps" || v.MTU != 1400 || !v.Internal || v.HostBinding != "127.0.0.1" ||
		v.EndpointCount != 1 || len(v.IPv6) != 1 || v.IPv6[0].Pool != "fd00:1::/64" || !v.Created.Equal(cliCreated) {
		t.Errorf("first network: %+v", v)
	}
	if strings.Contains(out.String(), `"Engine"`) {
		t.Errorf("ls --format json is an array of networks, no engine field in them:\n%s", out.String())
	}
	// Field names are part of the scripting interface.
	for _, key := range []string{`"ID"`, `"Name"`, `"Bridge"`, `"ICC"`, `"Masquerade"`, `"Internal"`, `"MTU"`, `"HostBinding"`, `"EndpointCount"`, `"IPv4"`, `"Gateway"`} {
		if !strings.Contains(out.String(), key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}

func TestInspectTable(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	var out bytes.Buffer
	// Flags after the network, and the network by its Docker name.
	if err := RunInspect([]string{"appnet", "--socket", srv.socket}, testEnv(&out)); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"Network:    " + cliNet1 + " (appnet)\n",
		"Bridge:     mn-3f1a2b3c4d5e\n",
		"Subnets:    10.123.0.0/24 gateway 10.123.0.1\n",
		"Options:    icc=yes masquerade=yes internal=no mtu=1500 host_ip=all\n",
		"Endpoints:  2\n",
		"Engine:     Docker 28.5.2\n",
		"ENDPOINT      CONTAINER  IPV4           IPV6  MAC                HOST VETH        PORTS\n",
		"e2e2e2e2e2e2  client     10.123.0.3/24  -     02:42:0a:7b:00:03  mnve2e2e2e2e2e2  -\n",
		"e1e1e1e1e1e1  web        10.123.0.2/24  -     02:42:0a:7b:00:02  mnve1e1e1e1e1e1  0.0.0.0:8080->80/tcp, 127.0.0.1:32768->53/udp\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, got)
		}
	}
}

func TestInspectJSON(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	var out bytes.Buffer
	if err := RunInspect([]string{"--format=json", "--socket", srv.socket, "br-apps"}, testEnv(&out)); err != nil {
		t.Fatal(err)
	}
	var v networkView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	want := endpointView{ID: cliEp3, IPv4: "10.124.0.2/24", IPv6: "fd00:1::2/64", MAC: "02:42:0a:7c:00:02",
		HostVeth: "mnve3e3e3e3e3e3", ContainerVeth: "mnce3e3e3e3e3e3", Created: cliCreated}
	if v.ID != cliNet2 || v.Engine != "28.5.2" || len(v.Endpoints) != 1 || !reflect.DeepEqual(v.Endpoints[0], want) {
		t.Errorf("inspect br-apps: %+v", v)
	}
}

func TestCLIErrors(t *testing.T) {
	srv := newStateServer(t, cannedDump())
	notPlugin := httptest.NewUnstartedServer(http.NotFoundHandler())
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "other.sock"))
	if err != nil {
		t.Fatal(err)
	}
	notPlugin.Listener.Close()
	notPlugin.Listener = l
	notPlugin.Start()
	defer notPlugin.Close()
	stale := filepath.Join(t.TempDir(), "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()

	for _, c := range []struct {
		name    string
		run     func([]string, *Env) error
		args    []string
		errPart string
	}{
		{"no socket", RunLs, []string{"--socket", "/nonexistent/mynet.sock"}, "socket does not exist"},
		{"stale socket", RunLs, []string{"--socket", stale}, "stale socket"},
		{"not mynet", RunLs, []string{"--socket", l.Addr().String()}, "does not serve /Mynet.State"},
		{"two targets", RunLs, []string{"--socket", srv.socket, "--name", "x"}, "at most one"},
		{"bad format", RunLs, []string{"--socket", srv.socket, "--format", "yaml"}, "use table or json"},
		{"bad name", RunLs, []string{"--name", "../x"}, "not a valid plugin name"},
		{"ls argument", RunLs, []string{"--socket", srv.socket, "extra"}, "takes no arguments"},
		{"inspect no network", RunInspect, []string{"--socket", srv.socket}, "one network"},
		{"inspect unknown", RunInspect, []string{"--socket", srv.socket, "nope"}, "no mynet network \"nope\""},
		{"inspect ambiguous", RunInspect, []string{"--socket", srv.socket, "3f1a"}, "matches 2 networks (3f1a2b3c4d5e, 3f1a99999999)"},
		{"unknown plugin", RunLs, []string{"--plugin", "other:1"}, "no such plugin"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := c.run(c.args, testEnv(&out))
			if err == nil || !strings.Contains(err.Error(), c.errPart) {
				t.Errorf("error %v, want one containing %q", err, c.errPart)
			}
		})
	}
}

func TestFindNetwork(t *testing.T) {
	views := networkViews(context.Background(), cannedDump(), testEnv(new(bytes.Buffer)))
	for _, c := range []struct{ ref, want string }{
		{cliNet1, cliNet1},
		{"3f1a2", cliNet1},
		{"3f1a9", cliNet2},
		{"77", cliNet3},
		{"br-apps", cliNet2},
		{"mn-3f1a2b3c4d5e", cliNet1},
		{"appnet", cliNet1},
		{"apps", cliNet2},
		{"3f1a", ""}, // ambiguous
		{"", ""},
		{"zz", ""},
	} {
		v, err := findNetwork(views, c.ref)
		if c.want == "" {
			if err == nil {
				t.Errorf("findNetwork(%q) = %s, want an error", c.ref, v.ID)
			}
			continue
		}
		if err != nil || v.ID != c.want {
			t.Errorf("findNetwork(%q) = %s, %v; want %s", c.ref, v.ID, err, c.want)
		}
	}
}

func TestPortText(t *testing.T) {
	for _, c := range []struct {
		p    state.Port
		want string
	}{
		{state.Port{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: "10.0.0.2", Port: 80}, "0.0.0.0:8080->80/tcp"},
		{state.Port{Proto: "tcp", HostPort: 8080, ContainerIP: "10.0.0.2", Port: 80}, "0.0.0.0:8080->80/tcp"},
		{state.Port{Proto: "udp", HostIP: "192.0.2.1", HostPort: 5353, HostPortEnd: 5353, ContainerIP: "10.0.0.2", Port: 53}, "192.0.2.1:5353->53/udp"},
		{state.Port{Proto: "tcp", HostPort: 8000, HostPortEnd: 8002, ContainerIP: "10.0.0.2", Port: 80}, "0.0.0.0:8000-8002->80-82/tcp"},
		{state.Port{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: "fd00::2", Port: 80}, "[::]:8080->80/tcp"},
		{state.Port{Proto: "sctp", HostIP: "::1", HostPort: 9000, HostPortEnd: 9000, ContainerIP: "fd00::2", Port: 9}, "[::1]:9000->9/sctp"},
	} {
		if got := portText(c.p); got != c.want {
			t.Errorf("portText(%+v) = %q, want %q", c.p, got, c.want)
		}
	}
}

func TestResolveTarget(t *testing.T) {
	env := testEnv(new(bytes.Buffer))
	for _, c := range []struct {
		name string
		cf   Flags
		want Target
	}{
		{"default", Flags{Format: "table"}, Target{Socket: "/run/docker/plugins/mynet.sock", Instance: "mynet", Restart: "systemctl restart mynet (or stop and start mynet serve)"}},
		{"name", Flags{Format: "table", name: "dev"}, Target{Socket: "/run/docker/plugins/dev.sock", Instance: "dev", InstanceKnown: true, Restart: "restart the daemon (mynet serve --name dev)"}},
		{"socket", Flags{Format: "json", socket: "/tmp/x.sock"}, Target{Socket: "/tmp/x.sock", Instance: "mynet", Restart: "systemctl restart mynet (or stop and start mynet serve)"}},
		{"socket and instance", Flags{Format: "json", socket: "/tmp/x.sock", instance: "e2e"}, Target{Socket: "/tmp/x.sock", Instance: "e2e", InstanceKnown: true, Restart: "systemctl restart mynet (or stop and start mynet serve)"}},
		{"plugin", Flags{Format: "table", pluginRef: "mynet:1.0"}, Target{
			Socket: "/run/docker/plugins/" + strings.Repeat("ab", 32) + "/mynet.sock", Instance: "mynet", Plugin: "mynet:1.0",
			Restart: "docker plugin disable -f mynet:1.0 && docker plugin enable mynet:1.0"}},
	} {
		got, err := c.cf.Resolve(context.Background(), env)
		if err != nil || got != c.want {
			t.Errorf("%s: resolve = %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}

func TestParseArgs(t *testing.T) {
	for _, c := range []struct {
		args    []string
		pos     []string
		format  string
		wantErr bool
	}{
		{[]string{"net1"}, []string{"net1"}, "table", false},
		{[]string{"--format", "json", "net1"}, []string{"net1"}, "json", false},
		{[]string{"net1", "--format", "json"}, []string{"net1"}, "json", false},
		{[]string{"net1", "--format=json", "net2"}, []string{"net1", "net2"}, "json", false},
		{[]string{"--", "--format"}, []string{"--format"}, "table", false},
		{[]string{"net1", "--bogus"}, nil, "", true},
	} {
		var cf Flags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cf.register(fs, false)
		pos, err := parseArgs(fs, c.args)
		if c.wantErr {
			if err == nil {
				t.Errorf("parseArgs(%q) succeeded", c.args)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(pos, c.pos) || cf.Format != c.format {
			t.Errorf("parseArgs(%q) = %q, format %q, %v; want %q, %q", c.args, pos, cf.Format, err, c.pos, c.format)
		}
	}
}
