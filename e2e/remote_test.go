package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
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
	hostIf   string     // the host end's name
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
	r.hostIf = hostIf

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

// listenInNetns opens a TCP listener inside the named network namespace.
func listenInNetns(name, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(name, func() (err error) {
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil && l != nil {
		l.Close()
		return nil, err
	}
	return l, err
}

// inNetns runs fn on an OS thread switched into the named network namespace.
// A socket belongs to the namespace it was created in, so only its creation
// needs to happen in fn; using it works from anywhere.
func inNetns(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the other namespace: leave it locked, so
		// the runtime ends it when this goroutine returns instead of
		// reusing it.
		return errors.Join(fnErr, fmt.Errorf("switching back to the host namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// where names the remote host's namespace as a place to run commands in,
// for scenario.get and runIn.
func (r *remoteHost) where() string { return netnsPlace + r.ns }

// udpExchange sends msg from the remote host's srcPort to dst and returns
// the first datagram that comes back. It sends again every 500ms, in case
// the first one was lost while something settled, until wait has passed.
// A fixed source port makes every datagram one conntrack flow.
func (r *remoteHost) udpExchange(srcPort uint16, dst netip.AddrPort, msg string, wait time.Duration) (string, error) {
	var conn *net.UDPConn
	err := inNetns(r.ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.addr, srcPort)))
		return err
	})
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return "", fmt.Errorf("UDP socket on %s:%d in %s: %w", r.addr, srcPort, r.ns, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 2048)
	for {
		if _, err := conn.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
			return "", fmt.Errorf("UDP to %s: %w", dst, err)
		}
		next := time.Now().Add(500 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		_ = conn.SetReadDeadline(next)
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return "", fmt.Errorf("UDP from %s: %w", dst, err)
		}
		if !time.Now().Before(deadline) {
			return "", fmt.Errorf("no UDP reply from %s to %s:%d within %v", dst, r.addr, srcPort, wait)
		}
	}
}
