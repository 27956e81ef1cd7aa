package doctor

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/mynet/mynet/plugin"
)

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

func TestWriteDoctor(t *testing.T) {
	rep := doctorReport{Instance: "mynet", Socket: "/run/docker/plugins/mynet.sock", Problems: 1, Findings: []finding{
		{Check: "ip_forward", Status: statusOK, Message: "net.ipv4.ip_forward = 1"},
		{Check: "orphan_rule", Status: statusProblem, Message: "2 iptables rules in MYNET-FORWARD name network abc, which the state does not know",
			Fix: "iptables -t filter -D MYNET-FORWARD -o br -j ACCEPT\niptables -t filter -D MYNET-FORWARD -i br -j ACCEPT"},
		{Check: "forward_policy", Status: statusInfo, Message: "FORWARD policy is DROP"},
	}}
	var out bytes.Buffer
	if err := writeDoctor(&out, rep); err != nil {
		t.Fatal(err)
	}
	want := `mynet doctor: instance mynet, socket /run/docker/plugins/mynet.sock

STATUS   CHECK           DETAIL
ok       ip_forward      net.ipv4.ip_forward = 1
PROBLEM  orphan_rule     2 iptables rules in MYNET-FORWARD name network abc, which the state does not know
                         fix: iptables -t filter -D MYNET-FORWARD -o br -j ACCEPT
                              iptables -t filter -D MYNET-FORWARD -i br -j ACCEPT
info     forward_policy  FORWARD policy is DROP

1 problem found
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}
