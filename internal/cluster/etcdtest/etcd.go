// Package etcdtest runs a throwaway etcd server for tests: Debian's
// etcd-server binary (found, or extracted once into /var/cache/mynet/etcd
// without running its package scripts, which would start a system
// service), on random loopback ports, with its data in a temporary
// directory, stopped by PID.
//
// Without a binary the tests skip with the reason; with CI=true or
// MYNET_E2E_REQUIRED=1 they fail instead, as the e2e suite does.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CacheDir is where the etcd-server package is extracted.
const CacheDir = "/var/cache/mynet/etcd"

// Server is one running etcd.
type Server struct {
	// Endpoint is the client URL, http://127.0.0.1:PORT.
	Endpoint string
	PID      int
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// Start runs an etcd for one test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		skipOrFail(t, err)
	}
	s, err := start(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

var shared struct {
	once sync.Once
	srv  *Server
	dir  string
	err  error
}

// Shared returns the test package's etcd, started on first use; Main
// stops it after the package's tests.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		bin, err := Binary()
		if err != nil {
			shared.err = err
			return
		}
		if shared.dir, err = os.MkdirTemp("", "etcdtest-"); err != nil {
			shared.err = err
			return
		}
		shared.srv, shared.err = start(bin, shared.dir)
	})
	if shared.err != nil {
		skipOrFail(t, shared.err)
	}
	return shared.srv
}

// Main runs the package's tests and stops the shared server (used as the
// body of TestMain).
func Main(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" || os.Getenv("MYNET_E2E_REQUIRED") == "1" {
		t.Fatalf("no etcd for the cluster store's tests: %v (required: CI=true or MYNET_E2E_REQUIRED=1)", err)
	}
	t.Skipf("no etcd for the cluster store's tests: %v", err)
}

// Binary finds an etcd server binary: $MYNET_ETCD_BIN, the extracted
// package in CacheDir, etcd on $PATH; failing those it extracts Debian's
// etcd-server into CacheDir (root, apt-get and dpkg-deb needed).
func Binary() (string, error) {
	if p := os.Getenv("MYNET_ETCD_BIN"); p != "" {
		return p, nil
	}
	cached := filepath.Join(CacheDir, "usr/bin/etcd")
	if _, err := os.Stat(cached); err == nil {
		return cached, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if err := extract(); err != nil {
		return "", fmt.Errorf("extract Debian's etcd-server into %s: %w (or set MYNET_ETCD_BIN)", CacheDir, err)
	}
	return cached, nil
}

// extract downloads the etcd-server package and unpacks it, under a lock
// so that parallel test packages do it once.
func extract() error {
	if err := os.MkdirAll(filepath.Dir(CacheDir), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(CacheDir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(CacheDir, "usr/bin/etcd")); err == nil {
		return nil // another package did it meanwhile
	}
	tmp, err := os.MkdirTemp(filepath.Dir(CacheDir), "etcd-dl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", "etcd-server")
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download etcd-server: %w: %s", err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "etcd-server_*.deb"))
	if len(debs) != 1 {
		return errors.New("apt-get download etcd-server gave no package")
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Rename(root, CacheDir)
}

// start runs etcd in dir, retrying with new ports if one was taken
// between choosing and binding it.
func start(bin, dir string) (*Server, error) {
	var err error
	for attempt := range 3 {
		var s *Server
		if s, err = startOnce(bin, filepath.Join(dir, "etcd"+strconv.Itoa(attempt))); err == nil {
			return s, nil
		}
	}
	return nil, err
}

func startOnce(bin, dir string) (*Server, error) {
	client, peer := freePort(), freePort()
	if client == 0 || peer == 0 || client == peer {
		return nil, errors.New("no free loopback port")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	curl := fmt.Sprintf("http://127.0.0.1:%d", client)
	purl := fmt.Sprintf("http://127.0.0.1:%d", peer)
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--name", "t", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "t="+purl, "--logger", "zap", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies, etcd goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &Server{Endpoint: curl, PID: cmd.Process.Pid, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	if err := s.waitHealthy(15 * time.Second); err != nil {
		s.Stop()
		log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
		return nil, fmt.Errorf("etcd at %s: %w; its log:\n%s", curl, err, tail(string(log), 2000))
	}
	return s, nil
}

func (s *Server) waitHealthy(limit time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return errors.New("exited before it was healthy")
		default:
		}
		resp, err := c.Get(s.Endpoint + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not healthy within %s", limit)
}

// Pause stops the server with SIGSTOP: connections stay open and nothing
// answers, as with a hung or partitioned store. Resume undoes it.
func (s *Server) Pause() error { return s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

// Stop kills the server by its PID and waits for it.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process would not die of TERM
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	})
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
