package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Restarting the engine. dockerd runs here as a plain process (started by
// scripts/test.sh or by hand, no service manager): the helper below finds it,
// records how it was started, stops it and starts it again with the same
// command line, environment, working directory and output, plus extra flags
// such as --live-restore. Whatever a test does, its cleanup brings back the
// original command line.

const (
	// engineLockEnv names the lock file that serialises runs sharing one
	// engine; "off" disables locking.
	engineLockEnv     = "MYNET_E2E_ENGINE_LOCK"
	defaultEngineLock = "/tmp/mynet-docker.lock"
	// engineStopTimeout bounds a graceful stop: dockerd waits for its
	// containers (their --stop-timeout) and then up to 15 s of its own
	// shutdown timeout.
	engineStopTimeout = 45 * time.Second
	// engineStartTimeout bounds a start until `docker info` answers.
	engineStartTimeout = 90 * time.Second
	dockerPidFile      = "/var/run/docker.pid"
)

// dockerdProc is how one dockerd process was started.
type dockerdProc struct {
	pid  int
	argv []string // as in /proc/PID/cmdline, argv[0] included
	exe  string   // the binary, resolved
	dir  string   // working directory
	env  []string
	// stdout and stderr are regular files the process wrote to, or ""
	// (a pipe, a terminal, /dev/null: not something to reopen).
	stdout, stderr string

	// exited is closed once the suite reaped a process it started itself;
	// nil for the one found running.
	exited chan struct{}
}

// engine is the dockerd that the docker CLI talks to, for one test.
type engine struct {
	t *testing.T
	// orig is dockerd as found when the test began; restore brings it back.
	orig *dockerdProc
	// cur is the process running now, nil while stopped.
	cur *dockerdProc
	// liveRestore: the original engine already has live-restore on.
	liveRestore bool
	// fallbackLog receives the output of dockerds started by the suite when
	// the original's output went nowhere that can be reopened.
	fallbackLog string
}

// takeEngine prepares a test to restart dockerd. It skips when that cannot
// be done safely: no plugin, an engine that is not a local plain process, or
// containers the test did not create (restarting would stop them). It
// takes the engine lock for the rest of the test, unless an ancestor process
// (`flock LOCK make e2e`) already holds it. Its cleanup removes s's
// containers and networks while the engine still answers, then restores the
// original dockerd.
func takeEngine(t *testing.T, s *scenario) *engine {
	t.Helper()
	requirePlugin(t)
	if e := currentEngine(); e != hostEngine {
		// Not engineSkip: this is a known limit of the engine, not a setup
		// to look at.
		t.Skipf("engine %s runs pivoted into a root filesystem of its own (scripts/engine.sh); "+
			"this test restarts a dockerd with the command line, files and namespaces it finds, "+
			"which only the host's engine has", e)
	}
	if h := os.Getenv("DOCKER_HOST"); h != "" && !strings.HasPrefix(h, "unix://") {
		engineSkip(t, "DOCKER_HOST=%s: the engine is not a local dockerd this test can restart", h)
	}
	lockEngine(t)
	p, err := findDockerd()
	if err != nil {
		engineSkip(t, "cannot restart dockerd: %v", err)
	}
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid)); strings.Contains(string(cg), ".service") {
		engineSkip(t, "dockerd (pid %d) runs under a service manager (%s); this test restarts only a plain process",
			p.pid, strings.TrimSpace(string(cg)))
	}
	if running := strings.Fields(docker(t, "ps", "--format", "{{.Names}}")); len(running) > 0 {
		engineSkip(t, "dockerd runs containers this test did not create (%s); restarting the engine would stop them",
			strings.Join(running, ", "))
	}
	e := &engine{t: t, orig: p, cur: p, liveRestore: docker(t, "info", "-f", "{{.LiveRestoreEnabled}}") == "true"}
	if env.plugin != nil {
		e.fallbackLog = filepath.Join(filepath.Dir(env.plugin.logPath), "dockerd.log")
	} else {
		e.fallbackLog = filepath.Join(os.TempDir(), "mynet-e2e-dockerd.log")
	}
	t.Logf("dockerd pid %d: %s (cwd %s, stdout %q, stderr %q, live-restore %v)",
		p.pid, commandLine(p.argv[0], p.argv[1:]), p.dir, p.stdout, p.stderr, e.liveRestore)
	t.Cleanup(func() {
		if engineAnswers() {
			s.removeAll()
		}
		if err := e.restore(); err != nil {
			t.Errorf("RESTORING THE ORIGINAL DOCKERD FAILED (%s): %v", commandLine(p.argv[0], p.argv[1:]), err)
		}
	})
	return e
}

// engineSkip skips, or fails when the suite must run (CI=true or
// MYNET_E2E_REQUIRED=1): a reason not to restart the engine is then one to
// look at.
func engineSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" || os.Getenv("MYNET_E2E_REQUIRED") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// findDockerd returns the running dockerd: the one in docker.pid, or the
// only one running.
func findDockerd() (*dockerdProc, error) {
	pid := 0
	if raw, err := os.ReadFile(dockerPidFile); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && processName(n) == "dockerd" {
			pid = n
		}
	}
	if pid == 0 {
		out, err := run("pidof", "dockerd")
		pids := strings.Fields(out)
		if err != nil || len(pids) != 1 {
			return nil, fmt.Errorf("want one dockerd process, pidof found %q", pids)
		}
		if pid, err = strconv.Atoi(pids[0]); err != nil {
			return nil, err
		}
	}
	return inspectProcess(pid)
}

func processName(pid int) string {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(comm))
}

// inspectProcess records how process pid was started.
func inspectProcess(pid int) (*dockerdProc, error) {
	proc := func(name string) string { return fmt.Sprintf("/proc/%d/%s", pid, name) }
	raw, err := os.ReadFile(proc("cmdline"))
	if err != nil {
		return nil, err
	}
	argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("pid %d has an empty command line", pid)
	}
	p := &dockerdProc{pid: pid, argv: argv}
	if p.exe, err = os.Readlink(proc("exe")); err != nil || strings.HasSuffix(p.exe, " (deleted)") {
		// Upgraded under its feet: start whatever the name now finds.
		if p.exe, err = exec.LookPath(argv[0]); err != nil {
			return nil, fmt.Errorf("binary of dockerd pid %d: %w", pid, err)
		}
	}
	if p.dir, err = os.Readlink(proc("cwd")); err != nil {
		return nil, err
	}
	// The environment is passed on as it is, never printed.
	rawEnv, err := os.ReadFile(proc("environ"))
	if err != nil {
		return nil, err
	}
	for _, kv := range strings.Split(string(rawEnv), "\x00") {
		if kv != "" {
			p.env = append(p.env, kv)
		}
	}
	p.stdout, p.stderr = outputFile(proc("fd/1")), outputFile(proc("fd/2"))
	return p, nil
}

// outputFile returns the regular file behind a descriptor link, or "".
func outputFile(fdLink string) string {
	target, err := os.Readlink(fdLink)
	if err != nil || !filepath.IsAbs(target) || strings.HasSuffix(target, " (deleted)") {
		return ""
	}
	if fi, err := os.Stat(target); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	return target
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// engineAnswers reports whether the docker CLI reaches an engine within a
// few seconds.
func engineAnswers() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").Run() == nil
}

// stop sends sig to the running dockerd and waits until it has exited;
// after a SIGTERM it gives up waiting after engineStopTimeout and kills it.
func (e *engine) stop(sig syscall.Signal) error {
	p := e.cur
	if p == nil {
		return nil
	}
	start := time.Now()
	if err := syscall.Kill(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to dockerd pid %d: %w", sig, p.pid, err)
	}
	err := p.wait(engineStopTimeout)
	if err != nil && sig != syscall.SIGKILL {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		err = errors.Join(err, p.wait(10*time.Second))
	}
	if err != nil {
		return err
	}
	e.cur = nil
	e.t.Logf("dockerd pid %d stopped with %v in %v", p.pid, sig, time.Since(start).Round(time.Millisecond))
	return nil
}

// wait waits until the process is gone (reaped, if the suite started it).
func (p *dockerdProc) wait(timeout time.Duration) error {
	deadline := time.After(timeout)
	if p.exited != nil {
		select {
		case <-p.exited:
			return nil
		case <-deadline:
			return fmt.Errorf("dockerd pid %d still running %v after the signal", p.pid, timeout)
		}
	}
	for alive(p.pid) {
		select {
		case <-deadline:
			return fmt.Errorf("dockerd pid %d still running %v after the signal", p.pid, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// start starts dockerd with the original command line plus extra flags and
// waits until the engine answers.
func (e *engine) start(extra ...string) error {
	if e.cur != nil {
		return fmt.Errorf("dockerd pid %d is still running", e.cur.pid)
	}
	o := e.orig
	p := &dockerdProc{
		argv: append(slices.Clone(o.argv), extra...), exe: o.exe, dir: o.dir, env: o.env,
		stdout: o.stdout, stderr: o.stderr, exited: make(chan struct{}),
	}
	if err := clearStalePidFile(); err != nil {
		return err
	}
	stdout, stderr, closeAll, err := e.openOutput()
	if err != nil {
		return err
	}
	defer closeAll() // the child has its own descriptors
	note := fmt.Sprintf("\n=== mynet e2e %s: %s: starting %s\n", time.Now().Format(time.TimeOnly), e.t.Name(), commandLine(p.argv[0], p.argv[1:]))
	_, _ = stderr.WriteString(note)
	cmd := &exec.Cmd{
		Path: p.exe, Args: p.argv, Dir: p.dir, Env: p.env, Stdout: stdout, Stderr: stderr,
		// Its own session: it must outlive the test binary and not get
		// the terminal's signals. No Pdeathsig, for the same reason.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	keepInheritedFDs()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting dockerd: %w", err)
	}
	p.pid = cmd.Process.Pid
	var waitErr error
	go func() {
		waitErr = cmd.Wait() // reap it, or a zombie would hold docker.pid
		close(p.exited)
	}()
	e.cur = p
	deadline := time.Now().Add(engineStartTimeout)
	for !engineAnswers() {
		select {
		case <-p.exited:
			e.cur = nil
			return fmt.Errorf("dockerd exited while starting (%v); its log: %s", waitErr, e.logName())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd pid %d does not answer %v after its start; its log: %s", p.pid, engineStartTimeout, e.logName())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lock := heldFile(p.pid, engineLockPath()); lock != "" {
		return fmt.Errorf("dockerd pid %d holds the engine lock %s open: it would keep every other run waiting", p.pid, lock)
	}
	e.t.Logf("dockerd pid %d started (%s) and answering in %v", p.pid, strings.Join(append([]string{"original flags"}, extra...), " "),
		time.Since(start).Round(time.Millisecond))
	return nil
}

// clearStalePidFile makes sure the pid file does not stop the next dockerd:
// dockerd refuses to start while the process it names exists, and a killed
// dockerd the suite did not start stays a zombie until its parent reaps it.
// It waits for that, and removes the file if the process is dead but not
// reaped after a few seconds.
func clearStalePidFile() error {
	raw, err := os.ReadFile(dockerPidFile)
	if err != nil {
		return nil // no pid file, nothing in the way
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil // dockerd ignores what it cannot parse
	}
	if alive(pid) {
		return fmt.Errorf("%s names pid %d, which still runs", dockerPidFile, pid)
	}
	gone := func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return fmt.Errorf("pid %d not reaped yet", pid)
		}
		return nil
	}
	if _, err := eventually(5*time.Second, gone); err == nil {
		return nil
	}
	if err := os.Remove(dockerPidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the stale %s (pid %d is dead, not reaped): %w", dockerPidFile, pid, err)
	}
	return nil
}

// keepInheritedFDs marks every descriptor of this process above stderr
// close-on-exec. Go opens its own files that way, but not the ones it
// inherited: under `flock LOCK go test`, the lock's descriptor reaches the
// test binary, and a dockerd started from it would hold the engine lock for
// as long as it runs.
func keepInheritedFDs() {
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// openOutput opens the original's output files for appending, or the
// fallback log for a stream that had none.
func (e *engine) openOutput() (stdout, stderr *os.File, closeAll func(), err error) {
	var files []*os.File
	closeAll = func() {
		for _, f := range files {
			f.Close()
		}
	}
	open := func(path string) (*os.File, error) {
		if path == "" {
			path = e.fallbackLog
		}
		for _, f := range files {
			if f.Name() == path {
				return f, nil
			}
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			files = append(files, f)
		}
		return f, err
	}
	if stdout, err = open(e.orig.stdout); err == nil {
		stderr, err = open(e.orig.stderr)
	}
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return stdout, stderr, closeAll, nil
}

func (e *engine) logName() string {
	if e.orig.stderr != "" {
		return e.orig.stderr
	}
	return e.fallbackLog
}

// restart stops dockerd with sig and starts it with the original flags plus
// extra, failing the test on error.
func (e *engine) restart(sig syscall.Signal, extra ...string) {
	e.t.Helper()
	if err := e.stop(sig); err != nil {
		e.t.Fatal(err)
	}
	if err := e.start(extra...); err != nil {
		e.t.Fatal(err)
	}
}

// restore leaves the original dockerd command line running: nothing to do
// if that is what runs and answers, else stop whatever runs and start it.
func (e *engine) restore() error {
	if e.cur != nil && slices.Equal(e.cur.argv, e.orig.argv) && alive(e.cur.pid) && engineAnswers() {
		return nil
	}
	if e.cur == nil {
		// Stopped by the test, or found dead: make sure of it.
		if p, err := findDockerd(); err == nil {
			e.cur = p
		}
	}
	if e.cur != nil {
		if err := e.stop(syscall.SIGTERM); err != nil {
			return err
		}
	}
	// Once more on failure: a down engine breaks every later test and
	// every other run on this host.
	err := e.start()
	if err == nil {
		return nil
	}
	e.t.Logf("restoring dockerd: %v; trying again", err)
	time.Sleep(time.Second)
	if again := e.start(); again != nil {
		return errors.Join(err, again)
	}
	return nil
}

// lockEngine holds the engine lock until the test ends, unless an ancestor
// of this process holds it already or locking is off. Other runs on the
// same engine take it too, so none of them sees dockerd go away.
func lockEngine(t *testing.T) {
	t.Helper()
	path := engineLockPath()
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("engine lock: %v", err)
	}
	deadline, waited := time.Now().Add(10*time.Minute), false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			t.Fatalf("engine lock %s: %v", path, err)
		}
		if holder, ok := ancestorHolds(f); ok {
			f.Close()
			t.Logf("engine lock %s is held by pid %d, an ancestor of this test", path, holder)
			return
		}
		if time.Now().After(deadline) {
			f.Close()
			t.Fatalf("engine lock %s: another run held it for 10 minutes", path)
		}
		if !waited {
			t.Logf("waiting for the engine lock %s: another run on this engine holds it", path)
			waited = true
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// engineLockPath is the engine lock's file, "" when locking is off.
func engineLockPath() string {
	switch path := os.Getenv(engineLockEnv); path {
	case "":
		return defaultEngineLock
	case "off":
		return ""
	default:
		return path
	}
}

// heldFile returns path if process pid has it open, else "".
func heldFile(pid int, path string) string {
	if path == "" {
		return ""
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			return path
		}
	}
	return ""
}

// ancestorHolds reports whether a flock on f's file is held by one of this
// process's ancestors, and which.
func ancestorHolds(f *os.File) (int, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, false
	}
	// /proc/locks: "1: FLOCK  ADVISORY  WRITE 2549 fe:00:778308 0 EOF";
	// waiters have "->" after the number.
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer locks.Close()
	holders := map[int]bool{}
	sc := bufio.NewScanner(locks)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && fields[1] == "FLOCK" && fields[5] == id {
			if pid, err := strconv.Atoi(fields[4]); err == nil {
				holders[pid] = true
			}
		}
	}
	for pid := os.Getppid(); pid > 1; pid = parentOf(pid) {
		if holders[pid] {
			return pid, true
		}
	}
	return 0, false
}

func parentOf(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	fields := strings.Fields(rest) // state, ppid, ...
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}
