package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// remoteHost stands for a machine outside the host: a network namespace
// joined to the host by a veth pair, on a random /24 of 198.18.0.0/15, which
// RFC 2544 reserves for benchmarking and no real destination uses.
type remoteHost struct {
	ns       string
	hostAddr netip.Addr // host end of the veth
	addr     netip.Addr // remote end
}

func newRemoteHost(t *testing.T) *remoteHost {
	t.Helper()
	id := randHex(3)
	subnet := netip.AddrFrom4([4]byte{198, 18, byte(1 + rand.IntN(254)), 0})
	r := &remoteHost{
		ns:       "mne2e-remote-" + id,
		hostAddr: subnet.Next(),
		addr:     subnet.Next().Next(),
	}
	// Not "mn...": links of that name are mynet's, and the leak check
	// counts them.
	hostIf, remoteIf := "e2e-h"+id, "e2e-r"+id

	ip := func(args ...string) {
		t.Helper()
		if _, err := run("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	ip("netns", "add", r.ns)
	t.Cleanup(func() {
		// Deleting the namespace destroys the veth pair with it.
		if _, err := run("ip", "netns", "del", r.ns); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ip("link", "add", hostIf, "type", "veth", "peer", "name", remoteIf, "netns", r.ns)
	ip("addr", "add", r.hostAddr.String()+"/24", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", r.ns, "link", "set", "lo", "up")
	ip("-n", r.ns, "addr", "add", r.addr.String()+"/24", "dev", remoteIf)
	ip("-n", r.ns, "link", "set", remoteIf, "up")
	// Without masquerading, replies to a container address would be
	// unroutable and the connection would just time out; with this route
	// it completes and the test can show which source address arrived.
	ip("-n", r.ns, "route", "add", "default", "via", r.hostAddr.String())
	return r
}

// accepted is what the remote host saw of one TCP connection.
type accepted struct {
	from netip.Addr
	line string
	err  error
}

// acceptOne listens on a TCP port inside the remote namespace and returns
// the port and a channel that delivers the first connection's source address
// and first line.
func (r *remoteHost) acceptOne(t *testing.T) (int, <-chan accepted) {
	t.Helper()
	l, err := listenInNetns(r.ns, netip.AddrPortFrom(r.addr, 0).String())
	if err != nil {
		t.Fatalf("listen in %s: %v", r.ns, err)
	}
	t.Cleanup(func() { l.Close() })
	result := make(chan accepted, 1)
	go func() {
		_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
		conn, err := l.Accept()
		if err != nil {
			result <- accepted{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		from := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		result <- accepted{from: from, line: strings.TrimSpace(line), err: err}
	}()
	return l.Addr().(*net.TCPAddr).Port, result
}

// listenInNetns opens a TCP listener inside the named network namespace. A
// socket belongs to the namespace it was created in, so only the creation
// needs this OS thread to switch namespaces; accepting works from anywhere.
func listenInNetns(name, addr string) (net.Listener, error) {
	target, err := netns.GetFromName(name)
	if err != nil {
		return nil, err
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	l, listenErr := net.Listen("tcp4", addr)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the remote namespace: leave it locked,
		// so the runtime ends it when this goroutine returns instead of
		// reusing it.
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("switching back to the host namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return l, listenErr
}
