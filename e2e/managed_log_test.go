package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestE2EManagedPluginLogLevels reads dockerd's own log: the engine records
// a managed plugin's stdout at info and its stderr at error (moby
// plugin/manager.go, makeLoggerStreams). mynet's info records must show
// there at level=info, and a failed request's record at level=error, in
// both log formats.
func TestE2EManagedPluginLogLevels(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	requireManagedPrerequisites(t)
	logPath := dockerdLogPath(t)

	m := &managedPlugin{t: t, ref: "mynet:e2e-" + s.id}
	stateDir := t.TempDir()
	t.Cleanup(func() {
		m.tryEnable()
		s.removeAll()
		m.remove()
	})
	m.build()
	docker(t, "plugin", "set", m.ref, "state.source="+stateDir)
	for i, format := range []string{"text", "json"} {
		if i > 0 {
			docker(t, "plugin", "disable", "-f", m.ref) // -f: the networks hold a reference
		}
		docker(t, "plugin", "set", m.ref, "args=--log-level=info --log-format="+format)
		offset := fileSize(logPath)
		m.enable()
		expectLogLevels(t, m, s, logPath, offset, format, fmt.Sprintf("10.%d.0.0/24", 162+2*i))
	}
}

// expectLogLevels creates a network of m, then one with an option mynet
// refuses, and checks dockerd's levels for the plugin's lines since offset.
func expectLogLevels(t *testing.T, m *managedPlugin, s *scenario, logPath string, offset int64, format, subnet string) {
	t.Helper()
	id := m.id()
	s.network("net-"+format, "-d", m.ref, "--ipam-driver", m.ref, "--subnet", subnet)
	// An option mynet refuses: CreateNetwork fails and mynet logs it at error.
	bad := s.name("bad-" + format)
	s.networks = append(s.networks, bad)
	if out, err := run("docker", "network", "create", "-d", m.ref, "--ipam-driver", m.ref,
		"-o", "com.docker.network.bridge.e2e_bogus=1", bad); err == nil {
		t.Fatalf("docker network create with an unknown option succeeded: %s", out)
	}

	// dockerd copies the plugin's output to its log asynchronously.
	var byLevel map[string][]string
	if _, err := eventually(10*time.Second, func() error {
		byLevel = pluginLogLevels(t, logPath, offset, id)
		if !hasLine(byLevel["error"], "request failed", "e2e_bogus") {
			return fmt.Errorf("no level=error line of plugin %s with mynet's failed CreateNetwork", id)
		}
		if !hasLine(byLevel["info"], "NetworkDriver.CreateNetwork") {
			return fmt.Errorf("no level=info line of plugin %s with mynet's CreateNetwork record", id)
		}
		return nil
	}); err != nil {
		t.Errorf("--log-format=%s, %s: %v; plugin lines by dockerd's level: %q", format, logPath, err, byLevel)
	}
	for _, line := range byLevel["error"] {
		if !mynetError(line) {
			t.Errorf("--log-format=%s: dockerd logged a mynet record below error at level=error: %s", format, line)
		}
	}
	for _, line := range byLevel["info"] {
		if mynetError(line) {
			t.Errorf("--log-format=%s: dockerd logged a mynet error record at level=info: %s", format, line)
		}
	}
	t.Logf("--log-format=%s: dockerd logged %d info and %d error lines of the plugin", format, len(byLevel["info"]), len(byLevel["error"]))
}

// mynetError reports whether mynet's record, quoted in dockerd's msg,
// is at error, in either of mynet's formats.
func mynetError(line string) bool {
	msg := dockerdLine.ReplaceAllString(line, "")
	return strings.Contains(msg, "level=ERROR") || strings.Contains(msg, `\"level\":\"ERROR\"`)
}

// dockerdLogPath is the file dockerd writes its log to (its stderr), as
// scripts/test.sh starts it; a dockerd whose log goes elsewhere (journald)
// skips the test.
func dockerdLogPath(t *testing.T) string {
	t.Helper()
	if e := currentEngine(); e != hostEngine {
		// scripts/engine.sh writes the engine's log beside its socket; the
		// pid of a dockerd found by name could be the host's.
		return filepath.Join("/run/mynet-engine", e, "dockerd.log")
	}
	p, err := findDockerd()
	if err != nil {
		skipUnlessRequired(t, "cannot find dockerd to read its log: %v", err)
	}
	if p.stderr == "" {
		skipUnlessRequired(t, "dockerd (pid %d) does not log to a file (journald?): its log cannot be read here", p.pid)
	}
	return p.stderr
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// dockerdLine is logrus's text format: time="..." level=LEVEL msg=...; the
// first level= of the line is dockerd's, mynet's own is inside msg.
var dockerdLine = regexp.MustCompile(`^time="[^"]*" level=(\w+) `)

// pluginLogLevels returns the lines dockerd logged for plugin id since
// offset, by dockerd's level.
func pluginLogLevels(t *testing.T, path string, offset int64, id string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) < offset {
		offset = 0 // truncated meanwhile
	}
	byLevel := map[string][]string{}
	for _, line := range strings.Split(string(data[offset:]), "\n") {
		m := dockerdLine.FindStringSubmatch(line)
		if m == nil || !strings.HasSuffix(line, " plugin="+id) {
			continue
		}
		byLevel[m[1]] = append(byLevel[m[1]], line)
	}
	return byLevel
}

func hasLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}
