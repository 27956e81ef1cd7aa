// Package failpoint lets tests stop mynet at a named step of an operation,
// either with an error (to test rollback) or by killing the process with
// SIGKILL (to test crash recovery). Production code calls Inject at each
// step; nothing is enabled unless a test or the MYNET_FAILPOINTS
// environment variable says so, and then only the named points act.
package failpoint

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
)

// EnvVar enables failpoints in a daemon: "name=crash,other=error".
const EnvVar = "MYNET_FAILPOINTS"

type action string

const (
	actError action = "error"
	actCrash action = "crash"
)

var active atomic.Pointer[map[string]action]

// Enable replaces the enabled failpoints with spec ("name=crash,
// other=error"); an empty spec disables them all.
func Enable(spec string) error {
	m := map[string]action{}
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		name, act, _ := strings.Cut(kv, "=")
		switch a := action(act); a {
		case actError, actCrash:
			m[name] = a
		default:
			return fmt.Errorf("failpoint %q: action %q is not error or crash", name, act)
		}
	}
	active.Store(&m)
	return nil
}

// Inject acts if the named failpoint is enabled: it returns an error, or
// kills the process on the spot, as a power cut or OOM kill would.
func Inject(name string) error {
	m := active.Load()
	if m == nil {
		return nil
	}
	switch (*m)[name] {
	case actError:
		return fmt.Errorf("injected failure at %s", name)
	case actCrash:
		fmt.Fprintf(os.Stderr, "failpoint %s: killing the process\n", name)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously
	}
	return nil
}
