package daemontest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestHostileInput sends malformed and invalid requests straight to the
// daemon's socket: each gets a 4xx with an error naming what was wrong,
// nothing is created, and the daemon keeps serving.
func TestHostileInput(t *testing.T) {
	ns := newNS(t)
	ns.run(t, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
	d := startDaemon(t, ns)
	before := ns.snapshot(t)
	nid := strings.Repeat("ab", 32)
	create := func(generic map[string]any, ipv4 ...map[string]any) map[string]any {
		if ipv4 == nil {
			ipv4 = []map[string]any{{"Pool": "10.88.0.0/24", "Gateway": "10.88.0.1/24"}}
		}
		return map[string]any{"NetworkID": nid, "Options": map[string]any{"com.docker.network.generic": generic}, "IPv4Data": ipv4}
	}
	for _, tc := range []struct {
		name, method string
		body         any
		want         string
	}{
		{"malformed JSON", "NetworkDriver.CreateNetwork", `{"NetworkID": "ab`, "decode"},
		{"empty body", "NetworkDriver.CreateNetwork", "", "empty request body"},
		{"trailing bytes", "NetworkDriver.CreateNetwork", `{}garbage`, "trailing"},
		{"33 MiB body", "NetworkDriver.CreateNetwork", `{"NetworkID":"` + strings.Repeat("a", 33<<20) + `"}`, "exceeds"}, // the limit is 32 MiB
		{"wrong type", "NetworkDriver.CreateEndpoint", `{"NetworkID":[1,2]}`, "NetworkID"},
		{"missing ID", "NetworkDriver.CreateNetwork", `{"IPv4Data":[]}`, "network ID"},
		{"short ID", "NetworkDriver.Join", `{"NetworkID":"abc","EndpointID":"def"}`, "64 hex"},
		{"non-hex ID", "NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": strings.Repeat("zz", 32), "EndpointID": nid}, "lowercase hex"},
		{"unknown address space", "IpamDriver.RequestPool", map[string]any{"AddressSpace": "mars", "Pool": "10.88.0.0/24"}, "address space"},
		{"non-canonical subnet", "IpamDriver.RequestPool", map[string]any{"Pool": "10.88.0.7/24"}, "10.88.0.0/24"},
		{"gateway outside", "NetworkDriver.CreateNetwork", create(nil, map[string]any{"Pool": "10.88.0.0/24", "Gateway": "10.99.0.1/24"}), "outside the subnet"},
		{"overlapping subnets", "NetworkDriver.CreateNetwork", create(nil, map[string]any{"Pool": "10.88.0.0/24"}, map[string]any{"Pool": "10.88.0.0/16"}), "overlap"},
		{"MTU out of range", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.driver.mtu": "65536"}), "com.docker.network.driver.mtu"},
		{"bad boolean", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.enable_icc": "yes please"}), "enable_icc"},
		{"bridge name too long", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "abcdefghijklmnop"}), "at most 15"},
		{"bridge name with slash", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "br/0"}), "'/'"},
		{"bridge name with space", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "br 0"}), "' '"},
		{"bridge name wildcard", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "mn+"}), "wildcard"},
		{"bridge name template", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "br%d"}), "'%'"},
		{"bridge name option-like", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "-j"}), "option"},
		{"bridge name taken", "NetworkDriver.CreateNetwork", create(map[string]any{"com.docker.network.bridge.name": "taken0"}), "not mynet's bridge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, err := d.call(tc.method, tc.body)
			if err != nil && tooBigClosed(tc.body, err) {
				return // refused before it was all sent; the daemon goes on below
			}
			if err != nil {
				t.Fatalf("transport error: %v", err)
			}
			msg, _ := out["Err"].(string)
			if code < 400 || !strings.Contains(msg, tc.want) {
				t.Fatalf("status %d, Err %q; want an error mentioning %q", code, msg, tc.want)
			}
		})
	}
	if after := ns.snapshot(t); after != before {
		t.Fatalf("rejected requests changed the namespace:\n%s\n---\n%s", before, after)
	}
	if st := d.state(); len(st.Networks)+len(st.Pools) != 0 {
		t.Fatalf("rejected requests left state: %+v", st)
	}
	d.mustCall("NetworkDriver.GetCapabilities", nil)
}

// TestSocketAndListeners: the socket is root-owned with mode 0660, and the
// daemon holds no TCP or UDP socket.
func TestSocketAndListeners(t *testing.T) {
	d := startDaemon(t, newNS(t))
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("socket mode %v uid %d gid %d; want 0660 root:root", fi.Mode().Perm(), st.Uid, st.Gid)
	}
	// `ip netns exec` runs the daemon as its child: find the daemon's pid.
	pid := daemonPID(t, d)
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.Trim(link[len("socket:"):], "[]")] = true
		}
	}
	if len(inodes) == 0 {
		t.Fatal("found no sockets of the daemon: the check would be vacuous")
	}
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(raw), "\n")[1:] {
			if f := strings.Fields(l); len(f) > 9 && inodes[f[9]] {
				t.Fatalf("the daemon holds a %s socket: %s", table, l)
			}
		}
	}
}

func daemonPID(t *testing.T, d *daemon) int {
	t.Helper()
	if d.cmd.Path == daemonBin {
		return d.cmd.Process.Pid
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if exe == daemonBin && strings.Contains(string(cmdline), d.name) {
			return pid
		}
	}
	t.Fatal("daemon process not found")
	return 0
}

// tooBigClosed: the server stops reading an oversized body at the limit
// and answers; a client still writing may see the connection close first.
func tooBigClosed(body any, err error) bool {
	b, _ := body.(string)
	return len(b) > 1<<20 && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET))
}
