package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/peers"
	"github.com/mynet/mynet/plugin"
)

func cannedReport() peers.Report {
	dead := time.Now().Add(-90 * time.Second)
	return peers.Report{
		Status: peers.Status{HostID: "a", Hosts: []peers.HostStatus{
			{ID: "a", VTEP: netip.MustParseAddr("198.19.77.1"), Alive: true},
			{ID: "b", VTEP: netip.MustParseAddr("198.19.77.2"), Alive: false, DeadSince: dead},
		}},
		Networks: []peers.NetworkReport{{
			NetworkStatus: peers.NetworkStatus{Name: "appnet", VNI: 4096, Device: "mnx4096", FDBEntries: 1, Listed: true,
				Peers: []peers.Peer{{IP: netip.MustParseAddr("10.77.0.3"), MAC: "02:42:0a:4d:00:03", VTEP: netip.MustParseAddr("198.19.77.2"), Host: "b"}}},
			Subnet: netip.MustParsePrefix("10.77.0.0/24"), Members: []string{"a", "b"},
		}},
	}
}

// clusterServer serves Mynet.Cluster through the plugin's router, as the
// daemon does in cluster mode.
func clusterServer(t *testing.T, r peers.Report) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "mynet.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	router := plugin.NewRouter(slog.New(slog.DiscardHandler), 10*time.Second)
	plugin.RegisterCluster(router, func(context.Context) peers.Report { return r })
	srv := httptest.NewUnstartedServer(router)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return socket
}

func TestClusterCommand(t *testing.T) {
	socket := clusterServer(t, cannedReport())
	tests := []struct {
		args []string
		want []string // lines (whitespace-collapsed) or JSON fragments
	}{
		{[]string{"hosts"}, []string{"HOST VTEP ALIVE DEAD SINCE", "a (this host) 198.19.77.1 yes -", "b 198.19.77.2 no "}},
		{[]string{"networks"}, []string{"NETWORK SUBNET VNI DEVICE MEMBERS PEERS FDB STATE", "appnet 10.77.0.0/24 4096 mnx4096 a,b 1 1 ok"}},
		{[]string{"hosts", "--format", "json"}, []string{`"id": "b"`, `"alive": false`, `"deadSince"`}},
		{[]string{"networks", "--format", "json"}, []string{`"name": "appnet"`, `"members": [`, `"mac": "02:42:0a:4d:00:03"`}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			if err := RunCluster(append(tt.args, "--socket", socket), testEnv(&out)); err != nil {
				t.Fatal(err)
			}
			got := out.String()
			if tt.args[len(tt.args)-1] == "json" {
				var v any
				if err := json.Unmarshal(out.Bytes(), &v); err != nil {
					t.Fatalf("not JSON: %v\n%s", err, got)
				}
			} else {
				got = strings.Join(strings.Fields(strings.ReplaceAll(got, "\n", " | ")), " ")
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestClusterCommandErrors(t *testing.T) {
	single := newStateServer(t, cannedDump()) // no Mynet.Cluster
	tests := []struct {
		args []string
		want string
	}{
		{nil, "needs a subcommand"},
		{[]string{"peers"}, "unknown subcommand"},
		{[]string{"hosts", "extra", "--socket", single.socket}, "takes no arguments"},
		{[]string{"hosts", "--socket", single.socket}, "not in cluster mode"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := RunCluster(tt.args, testEnv(&out))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("mynet cluster %q: error %v, want one saying %q", tt.args, err, tt.want)
		}
	}
}
