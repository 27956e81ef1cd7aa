// Package nstest runs privileged tests inside a throwaway network namespace,
// so that links, addresses and iptables rules they create never touch the
// host. Tests skip with a clear message when not run as root.
package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Run locks the calling goroutine to its OS thread, moves that thread into a
// new network namespace with lo up, runs fn, and moves the thread back.
//
// Everything fn does on this goroutine (netlink calls, and iptables child
// processes, which inherit the forking thread's namespace) happens in the new
// namespace. fn must not start goroutines that touch the network: they run on
// other threads, in the host namespace. The restore is a defer on the same
// goroutine, not t.Cleanup, which may run on another thread.
func Run(t testing.TB, fn func()) {
	t.Helper()
	RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New() // also switches this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("create netns: %v", err)
	}
	defer func() {
		ns.Close()
		if err := netns.Set(orig); err != nil {
			// The thread is stuck in the test namespace: keep it locked so
			// the runtime discards it instead of reusing it.
			t.Errorf("restore netns: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	fn()
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "privileged test: run as root (sudo make test) to create network namespaces")
	}
}

// RequireCommand skips the test when a binary it drives is not installed.
func RequireCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skip(t, fmt.Sprintf("privileged test needs %s: install it (scripts/test.sh does)", name))
	}
}

// skip skips the test, or fails it under MYNET_PRIVILEGED_REQUIRED=1
// (scripts/test.sh, which installs every tool first): there a missing tool
// is a broken setup, and a skip would pass the suite without the test.
func skip(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("MYNET_PRIVILEGED_REQUIRED") == "1" {
		t.Fatal(why + " (MYNET_PRIVILEGED_REQUIRED=1)")
	}
	t.Skip(why)
}
