package portalloc

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestClashes(t *testing.T) {
	m := Mapping{Proto: "tcp", HostIP: "198.18.0.1", HostPort: 8000, HostPortEnd: 8010, Port: 8000}
	all := Mapping{Proto: "tcp", HostPort: 80, HostPortEnd: 80, Port: 80}
	for _, tc := range []struct {
		name   string
		m      Mapping
		proto  string
		hostIP string
		port   uint16
		want   bool
	}{
		{"same address, in range", m, "tcp", "198.18.0.1", 8005, true},
		{"all addresses vs one", m, "tcp", "", 8000, true},
		{"other address", m, "tcp", "198.18.0.2", 8005, false},
		{"other protocol", m, "udp", "198.18.0.1", 8005, false},
		{"below range", m, "tcp", "198.18.0.1", 7999, false},
		{"above range", m, "tcp", "198.18.0.1", 8011, false},
		{"one address vs all", all, "tcp", "198.18.0.3", 80, true},
	} {
		var ip netip.Addr
		if tc.hostIP != "" {
			ip = netip.MustParseAddr(tc.hostIP)
		}
		if got := Clashes(tc.m, tc.proto, ip, tc.port); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPick(t *testing.T) {
	errTaken := errors.New("taken")
	taken := func(ports ...uint16) func(uint16) error {
		return func(p uint16) error {
			for _, q := range ports {
				if p == q {
					return fmt.Errorf("%d: %w", p, errTaken)
				}
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name    string
		req     Request
		check   func(uint16) error
		want    uint16
		wantErr string
	}{
		{"given port free", Request{Proto: "tcp", Port: 80, First: 8080}, taken(), 8080, ""},
		{"given port taken: its own error", Request{Proto: "tcp", Port: 80, First: 8080}, taken(8080), 0, "8080: taken"},
		{"range: first free", Request{Proto: "tcp", Port: 80, First: 8080, Last: 8082}, taken(8080), 8081, ""},
		{"range exhausted", Request{Proto: "udp", Port: 53, First: 8080, Last: 8081}, taken(8080, 8081), 0, "no free host port for 53/udp in 8080-8081 (last problem: 8081: taken)"},
		{"ephemeral", Request{Proto: "tcp", Port: 80}, taken(30000), 30001, ""},
		{"ephemeral exhausted", Request{Proto: "tcp", Port: 80}, taken(30000, 30001, 30002), 0, "in 30000-30002"},
		{"top of the port space", Request{Proto: "tcp", Port: 1, First: 65535, Last: 65535}, taken(), 65535, ""},
	} {
		got, err := Pick(tc.req, 30000, 30002, tc.check)
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: got %d, %v; want %d, %q", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestCoalesceAndDescribe(t *testing.T) {
	id := func(proto, ip string, port uint16) Mapping {
		return Mapping{Proto: proto, ContainerIP: ip, HostPort: port, HostPortEnd: port, Port: port}
	}
	for _, tc := range []struct {
		name string
		in   []Mapping
		want string
	}{
		{"run merges", []Mapping{id("tcp", "10.1.0.2", 8001), id("tcp", "10.1.0.2", 8000), id("tcp", "10.1.0.2", 8002)}, "*:8000-8002->10.1.0.2:8000-8002/tcp"},
		{"gap splits", []Mapping{id("tcp", "10.1.0.2", 8000), id("tcp", "10.1.0.2", 8002)}, "*:8000->10.1.0.2:8000/tcp, *:8002->10.1.0.2:8002/tcp"},
		{"protocols apart", []Mapping{id("udp", "10.1.0.2", 8001), id("tcp", "10.1.0.2", 8000)}, "*:8000->10.1.0.2:8000/tcp, *:8001->10.1.0.2:8001/udp"},
		{"non-identity kept", []Mapping{{Proto: "tcp", HostIP: "198.18.0.1", HostPort: 9000, HostPortEnd: 9000, ContainerIP: "10.1.0.2", Port: 80}, id("tcp", "10.1.0.2", 81)}, "*:81->10.1.0.2:81/tcp, 198.18.0.1:9000->10.1.0.2:80/tcp"},
		{"empty", nil, ""},
	} {
		if got := Describe(Coalesce(tc.in)); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}
