// Package failpoint lets tests stop mynet at a named step of an operation,
// either with an error (to test rollback), by killing the process with
// SIGKILL (to test crash recovery), or by stalling it (to test deadlines).
// Production code calls Inject at each step; nothing is enabled unless a
// test or the MYNET_FAILPOINTS environment variable says so, and then only
// the named points act.
package failpoint

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// EnvVar enables failpoints in a daemon: "name=crash,other=error,
// third=sleep(2s)".
const EnvVar = "MYNET_FAILPOINTS"

type action struct {
	kind  string // "error", "crash" or "sleep"
	sleep time.Duration
}

var active atomic.Pointer[map[string]action]

// Enable replaces the enabled failpoints with spec, a comma-separated list
// of name=action; an empty spec disables them all. The actions:
//
//	error        Inject returns an error
//	crash        the process is killed with SIGKILL
//	sleep(DUR)   Inject blocks for DUR (a Go duration, e.g. 2s), then
//	             lets the step go on, as a kernel call that is slow to
//	             answer would; it does not watch any context on purpose
func Enable(spec string) error {
	m := map[string]action{}
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		name, act, _ := strings.Cut(kv, "=")
		a, err := parseAction(act)
		if err != nil {
			return fmt.Errorf("failpoint %q: %w", name, err)
		}
		m[name] = a
	}
	active.Store(&m)
	return nil
}

func parseAction(s string) (action, error) {
	switch s {
	case "error", "crash":
		return action{kind: s}, nil
	}
	if arg, ok := strings.CutPrefix(s, "sleep("); ok && strings.HasSuffix(arg, ")") {
		d, err := time.ParseDuration(strings.TrimSuffix(arg, ")"))
		if err != nil || d <= 0 {
			return action{}, fmt.Errorf("action %q: want sleep(DURATION), e.g. sleep(2s)", s)
		}
		return action{kind: "sleep", sleep: d}, nil
	}
	return action{}, fmt.Errorf("action %q is not error, crash or sleep(DURATION)", s)
}

// Inject acts if the named failpoint is enabled: it returns an error, kills
// the process on the spot, as a power cut or OOM kill would, or stalls.
func Inject(name string) error {
	m := active.Load()
	if m == nil {
		return nil
	}
	a := (*m)[name]
	switch a.kind {
	case "error":
		return fmt.Errorf("injected failure at %s", name)
	case "crash":
		fmt.Fprintf(os.Stderr, "failpoint %s: killing the process\n", name)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously
	case "sleep":
		time.Sleep(a.sleep)
	}
	return nil
}
