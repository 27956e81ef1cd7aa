package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The engine matrix. MYNET_E2E_ENGINES lists the engines the suite runs
// against, in order: "host" is the engine the docker CLI reaches by default;
// any other name is one that scripts/engine.sh runs beside it. The suite then
// runs once per engine, each time in a process of its own: the host's
// directly, another through `engine.sh exec`, so that the plugin, ip and
// iptables see that engine's namespaces. Each run prints one summary line.
const (
	enginesEnv = "MYNET_E2E_ENGINES"
	// engineEnv names the engine a run is on; set by the matrix.
	engineEnv  = "MYNET_E2E_ENGINE"
	hostEngine = "host"
)

// engineScript is scripts/engine.sh; go test runs in e2e/.
var engineScript = filepath.Join("..", "scripts", "engine.sh")

// currentEngine is the engine this process tests.
func currentEngine() string {
	if e := os.Getenv(engineEnv); e != "" {
		return e
	}
	return hostEngine
}

// matrixEngines returns the engines to run one by one, or nil when this
// process runs the scenarios itself.
func matrixEngines() ([]string, error) {
	list := os.Getenv(enginesEnv)
	if list == "" || os.Getenv(engineEnv) != "" {
		return nil, nil
	}
	var engines []string
	for _, e := range strings.Split(list, ",") {
		switch e = strings.TrimSpace(e); e {
		case hostEngine, "sid", "trixie", "sid-nft":
			engines = append(engines, e)
		default:
			return nil, fmt.Errorf("%s=%q: unknown engine %q (want host, sid, trixie or sid-nft)", enginesEnv, list, e)
		}
	}
	return engines, nil
}

// runMatrix runs the suite once per engine and prints a summary line for
// each; it fails when any run failed.
func runMatrix(engines []string) int {
	code := 0
	var summary []string
	for _, e := range engines {
		line, err := runOnEngine(e)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: FAIL: engine %s: %v\n", e, err)
			code = 1
		}
		summary = append(summary, line)
	}
	for _, l := range summary {
		fmt.Println(l)
	}
	return code
}

// runOnEngine runs this test binary, with its own arguments, against one
// engine and returns its summary line.
func runOnEngine(engine string) (summary string, err error) {
	notRun := func(err error) (string, error) {
		return fmt.Sprintf("e2e (engine %s): not run: %v", engine, err), err
	}
	self, err := os.Executable()
	if err != nil {
		return notRun(err)
	}
	environ := append(os.Environ(), engineEnv+"="+engine)
	firewall := os.Getenv(firewallEnv)
	if firewall == "" && engineFirewall[engine] != "" {
		firewall = engineFirewall[engine]
		environ = append(environ, firewallEnv+"="+firewall)
	}
	if dir := os.Getenv("MYNET_E2E_LOGDIR"); dir != "" {
		environ = append(environ, "MYNET_E2E_LOGDIR="+filepath.Join(dir, engine))
	}
	argv := append([]string{self}, os.Args[1:]...)
	host := os.Getenv("DOCKER_HOST")
	if engine != hostEngine {
		unlock, lerr := lockSharedEngine(engine)
		if lerr != nil {
			return notRun(lerr)
		}
		defer unlock()
		var started bool
		if host, started, err = engineUp(engine); err != nil {
			return notRun(err)
		}
		if started {
			defer func() {
				if out, derr := run(engineScript, "down", engine); derr != nil {
					err = errors.Join(err, fmt.Errorf("%s down %s: %w: %s", engineScript, engine, derr, out))
				}
			}()
		}
		// The restart tests' lock serialises runs sharing one engine; this
		// engine is not the host's.
		environ = append(environ, "DOCKER_HOST="+host, engineLockEnv+"=/tmp/mynet-docker-"+engine+".lock")
		argv = append([]string{engineScript, "exec", engine}, argv...)
	}
	version, err := serverVersion(host)
	if err != nil {
		return notRun(err)
	}

	fmt.Printf("e2e: engine %s: docker %s\n", engine, version)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = environ
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return notRun(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return notRun(err)
	}
	n := countResults(io.TeeReader(out, os.Stdout))
	err = cmd.Wait()
	fmt.Printf("e2e: engine %s: the suite took %v\n", engine, time.Since(start).Round(time.Second))
	what := "docker " + version
	if firewall != "" {
		what += ", " + firewall
	}
	summary = fmt.Sprintf("e2e (%s): %d passed, %d failed, %d skipped", what, n["PASS"], n["FAIL"], n["SKIP"])
	if err != nil {
		return summary, fmt.Errorf("the suite: %w", err)
	}
	return summary, nil
}

// lockSharedEngine waits for other suites on engine to finish: the engine
// is one per host, and a run that started it stops it at its end.
func lockSharedEngine(engine string) (unlock func(), err error) {
	path := "/tmp/mynet-engine-" + engine + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("engine lock: %w", err)
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		fmt.Printf("e2e: engine %s: waiting for another suite, which holds %s\n", engine, path)
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("engine lock %s: %w", path, err)
		}
	}
	return func() { f.Close() }, nil
}

// engineUp starts engine unless it is running and returns its DOCKER_HOST
// and whether this call started it (and so must stop it).
func engineUp(engine string) (host string, started bool, err error) {
	_, statErr := os.Stat(filepath.Join("/run/mynet-engine", engine, "dockerd.pid"))
	start := time.Now()
	// Not run(): the first up builds the root filesystem, which may take
	// longer than a command's timeout on a slow mirror; it says so on stderr.
	cmd := exec.Command(engineScript, "up", engine)
	cmd.Stderr = os.Stderr
	raw, err := cmd.Output()
	out := string(raw)
	if err != nil {
		return "", false, fmt.Errorf("%s up %s: %w", engineScript, engine, err)
	}
	for _, l := range strings.Split(out, "\n") {
		if h, ok := strings.CutPrefix(l, "DOCKER_HOST="); ok {
			fmt.Printf("e2e: engine %s up in %v (%s)\n", engine, time.Since(start).Round(time.Millisecond), h)
			return h, statErr != nil, nil
		}
	}
	return "", statErr != nil, fmt.Errorf("%s up %s printed no DOCKER_HOST line:\n%s", engineScript, engine, out)
}

// serverVersion returns the engine's version without Debian's suffix
// ("28.5.2+dfsg4" is 28.5.2).
func serverVersion(host string) (string, error) {
	args := []string{"version", "--format", "{{.Server.Version}}"}
	if host != "" {
		args = append([]string{"-H", host}, args...)
	}
	v, err := run("docker", args...)
	if err != nil {
		return "", err
	}
	v, _, _ = strings.Cut(v, "+")
	return v, nil
}

// resultLine is a top-level test's result in `go test -v` output.
var resultLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): `)

// countResults reads r to its end and counts top-level results by kind.
func countResults(r io.Reader) map[string]int {
	n := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if m := resultLine.FindStringSubmatch(sc.Text()); m != nil {
			n[m[1]]++
		}
	}
	_, _ = io.Copy(io.Discard, r) // a line too long for the scanner
	return n
}
