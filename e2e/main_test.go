package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// env is what TestMain sets up once for every scenario.
var env struct {
	// skip, when set, is why every scenario skips.
	skip string
	// driver is the -d value for networks under test; ipamDriver the
	// --ipam-driver value, empty when only Docker's IPAM is available.
	driver, ipamDriver string
	// linkPrefix starts the name of every host link the driver creates.
	linkPrefix string
	// plugin is nil when the suite runs against Docker's bridge driver.
	plugin *plugin
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	start := time.Now()
	engines, err := matrixEngines()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}
	if engines != nil {
		return runMatrix(engines)
	}
	bridgeMode, err := bridgeMode()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}
	if reason := missingPrerequisite(bridgeMode); reason != "" {
		if os.Getenv("CI") == "true" || os.Getenv("MYNET_E2E_REQUIRED") == "1" {
			fmt.Fprintf(os.Stderr, "e2e: FAIL: %s (the suite must run when CI=true or MYNET_E2E_REQUIRED=1)\n", reason)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: skipping every scenario: %s\n", reason)
		env.skip = reason
		return m.Run()
	}

	if err := ensureImage(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building the test image: %v\n", err)
		return 1
	}
	if bridgeMode {
		env.driver, env.linkPrefix = "bridge", "br-"
		fmt.Println("e2e: MYNET_E2E_DRIVER=bridge: running against Docker's bridge driver, no plugin")
		return m.Run()
	}

	p, err := startSuitePlugin()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	env.driver, env.ipamDriver, env.linkPrefix, env.plugin = p.name, p.name, "mn", p
	code := m.Run()
	if err := p.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: stopping the plugin: %v\n", err)
		code = 1
	}
	reportLeftovers()
	fmt.Printf("e2e: suite took %v; plugin log: %s\n", time.Since(start).Round(time.Millisecond), p.logPath)
	return code
}

func bridgeMode() (bool, error) {
	switch d := os.Getenv("MYNET_E2E_DRIVER"); d {
	case "", "mynet":
		return false, nil
	case "bridge":
		return true, nil
	default:
		return false, fmt.Errorf("MYNET_E2E_DRIVER=%q: want empty, mynet or bridge", d)
	}
}

// missingPrerequisite returns why the suite cannot run here, or "".
func missingPrerequisite(bridgeMode bool) string {
	if os.Geteuid() != 0 {
		return "not root: the suite creates networks, network namespaces and iptables rules"
	}
	for _, tool := range []string{"docker", "ip", "iptables-save", "ip6tables-save", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not found on PATH", tool)
		}
	}
	if _, err := exec.LookPath("nft"); err != nil && usesNFT() {
		return firewallEnv + "=nftables: nft not found on PATH (the leak checks list the plugin's tables with it)"
	}
	if err := requireStatic(busyboxPath); err != nil {
		return err.Error()
	}
	if out, err := run("docker", "version", "--format", "{{.Server.Version}}"); err != nil {
		return fmt.Sprintf("the docker engine does not answer: %v", err)
	} else if out == "" {
		return "the docker engine reported no server version"
	}
	if !bridgeMode {
		if _, err := pluginBinary(); err != nil {
			return err.Error()
		}
	}
	return ""
}

// pluginBinary returns the absolute path of the plugin binary under test.
func pluginBinary() (string, error) {
	bin := os.Getenv("MYNET_BIN")
	if bin == "" {
		bin = filepath.Join("..", "bin", "mynet") // go test runs in e2e/
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("plugin binary: %w (run `make build` or set MYNET_BIN)", err)
	}
	if fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("plugin binary %s is not executable", abs)
	}
	return abs, nil
}

func startSuitePlugin() (*plugin, error) {
	bin, err := pluginBinary()
	if err != nil {
		return nil, err
	}
	logDir := os.Getenv("MYNET_E2E_LOGDIR")
	if logDir == "" {
		if logDir, err = os.MkdirTemp("", "mynet-e2e-logs-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	stateDir, err := os.MkdirTemp("", "mynet-e2e-state-")
	if err != nil {
		return nil, err
	}
	p := &plugin{
		bin:      bin,
		name:     "mynet-e2e-" + randHex(3),
		stateDir: stateDir,
		logPath:  filepath.Join(logDir, "plugin.log"),
	}
	fmt.Printf("e2e: plugin %s (%s), state %s, log %s\n", p.name, bin, stateDir, p.logPath)
	// Restarts append to the log; a new suite run starts it afresh.
	if err := os.WriteFile(p.logPath, nil, 0o644); err != nil {
		return nil, err
	}
	if err := p.start(); err != nil {
		return nil, errors.Join(fmt.Errorf("starting the plugin: %w", err), p.stop())
	}
	return p, nil
}

// reportLeftovers prints mynet objects still on the host after the plugin
// stopped. Scenarios already failed on anything they leaked, so what remains
// here is global state the plugin keeps across networks (e.g. base chains).
func reportLeftovers() {
	snap, err := takeSnapshot(nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: final snapshot: %v\n", err)
		return
	}
	if len(snap) > 0 {
		fmt.Printf("e2e: note: after the plugin stopped, the host still has:\n")
		for _, l := range snap {
			fmt.Printf("  %s\n", l)
		}
	}
}
