package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/metrics"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

type serveFlags struct {
	name        string
	stateDir    string
	logLevel    string
	logFormat   string
	socketGroup int
	pools       []ipam.PoolSpec
	reconcile   time.Duration

	metricsSocket, metricsAddr string
	pprof                      bool
	discardOrphans             bool
	firewall                   string
	cluster                    clusterFlags
}

func parseServeFlags(args []string) (serveFlags, error) {
	f := serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&f.name, "name", "mynet", "plugin name: the socket is "+cli.PluginDir+"/<name>.sock, and users pass it to -d and --ipam-driver")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/mynet", "directory of the state database")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.IntVar(&f.socketGroup, "socket-group", 0, "group ID that may use the socket (mode 0660)")
	fs.Func("default-address-pool", "pool for networks without --subnet, as base=CIDR,size=N (repeatable; default "+ipam.DefaultPoolSpecs[0].String()+" and "+ipam.DefaultPoolSpecs[1].String()+")", func(s string) error {
		spec, err := ipam.ParsePoolSpec(s)
		if err == nil {
			f.pools = append(f.pools, spec)
		}
		return err
	})
	fs.DurationVar(&f.reconcile, "reconcile-interval", 5*time.Second, "how often to check mynet's links and rules for outside changes and repair them (0: only at startup and on SIGHUP)")
	fs.StringVar(&f.metricsSocket, "metrics-socket", "", "serve Prometheus metrics on this unix socket (mode 0660, group --socket-group); off by default")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this loopback address, 127.0.0.1:PORT or [::1]:PORT; off by default")
	fs.BoolVar(&f.discardOrphans, "discard-orphans", false, "at startup, delete the links and rules tagged by this instance that the state does not know, even those of another state file (a lost or replaced one), instead of refusing to start")
	fs.StringVar(&f.firewall, "firewall", model.FirewallAuto, "where mynet keeps its rules: iptables, nftables, or auto, which follows dockerd (Docker's nftables table present: nftables; Docker's iptables chains: iptables; neither: iptables when the binary works)")
	fs.BoolVar(&f.pprof, "pprof", false, "also serve Go's profiler (/debug/pprof/) on the metrics listener")
	f.cluster.register(fs)
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if err := f.cluster.check(); err != nil {
		return f, err
	}
	if f.pprof && f.metricsSocket == "" && f.metricsAddr == "" {
		return f, errors.New("--pprof serves on the metrics listener: give --metrics-socket or --metrics-addr too")
	}
	if f.metricsSocket != "" && f.metricsAddr != "" {
		return f, errors.New("give --metrics-socket or --metrics-addr, not both")
	}
	if f.metricsAddr != "" {
		if err := metrics.CheckAddr(f.metricsAddr); err != nil {
			return f, err
		}
	}
	if _, _, err := bridge.ChooseFirewall(f.firewall, bridge.FirewallUse{IPTablesWorks: true}); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	if !cli.ValidName(f.name) {
		return f, fmt.Errorf("--name %q: use letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters", f.name)
	}
	return f, nil
}

// newLogger logs records below error to out and the rest to errOut.
func newLogger(level, format string, out, errOut io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "json":
		return slog.New(newLevelSplit(out, errOut, opts, format == "json")), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func serve(args []string) error {
	f, err := parseServeFlags(args)
	if err != nil {
		return err
	}
	log, err := newLogger(f.logLevel, f.logFormat, os.Stdout, os.Stderr)
	if err != nil {
		return err
	}
	log = log.With("plugin", f.name)

	if err := failpoint.Enable(os.Getenv(failpoint.EnvVar)); err != nil {
		return err
	}
	store, snap, err := openState(f.stateDir, log)
	if err != nil {
		return err
	}
	defer store.Close()
	dp, err := newDataplane(f, store, snap, log)
	if err != nil {
		return err
	}
	defer dp.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := driver.Config{Log: log, Store: store, Dataplane: dp, DefaultPools: f.pools, Generation: store.Generation(),
		Repairs: metrics.ReconcileRepairs, ReconcileErrors: metrics.ReconcileErrors, ObservePass: metrics.ObserveReconcilePass,
		FirewallSwitches: metrics.FirewallSwitches}
	var cm *clusterMode
	if f.cluster.store != "" {
		if cm, err = startCluster(ctx, f.cluster, f.stateDir, store, dp, log); err != nil {
			return err
		}
		defer cm.stop(log)
		cfg.Cluster = cm.cfg
	}
	drv := driver.New(cfg)
	// A signal during the restore stops mynet after it, not halfway.
	if err := drv.RestoreSnapshot(context.WithoutCancel(ctx), snap); errors.Is(err, state.ErrUnusable) {
		return unusableFile(err, store.Path())
	} else if err != nil {
		// Kernel errors: serve anyway, since refusing would strand every
		// network; the problems are in the log and the affected calls
		// fail with their own errors.
		log.Error("restore incomplete", "err", err)
	}

	checkEngineFirewall(ctx, log, dp.FirewallBackend(), bridge.DetectFirewalls(f.name).Docker() != "")
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		if cm != nil {
			go cm.run(ctx, drv)
			go drv.RunClusterQueue(ctx)
		}
		drv.ReconcileLoop(ctx, f.reconcile, hup)
	}()
	// A pass under way finishes before the dataplane and the store close
	// under it (deferred above, so run after this).
	defer func() {
		stop()
		<-loopDone
	}()
	return serveRequests(ctx, f, drv, cm, log, store.Path(), dp.Chains())
}

// openState opens the state database and reads every record.
func openState(dir string, log *slog.Logger) (*state.Store, state.Snapshot, error) {
	store, err := state.Open(dir)
	if err != nil {
		return nil, state.Snapshot{}, unusableFile(err, filepath.Join(dir, state.FileName))
	}
	if w := store.Warning(); w != "" {
		log.Warn(w, "state", store.Path())
	}
	// Read and check every record before touching the kernel: a state
	// that is not fully readable must not drive the reconcile's deletes.
	snap, err := store.Load()
	if err != nil {
		store.Close()
		return nil, state.Snapshot{}, unusableFile(err, store.Path())
	}
	return store, snap, nil
}

// newDataplane checks the host and opens the dataplane, once the objects
// tagged by this instance are known to be this state's.
func newDataplane(f serveFlags, store *state.Store, snap state.Snapshot, log *slog.Logger) (*bridge.Dataplane, error) {
	if st, err := bridge.EnsureHost(log); err != nil {
		// Not fatal: networks that need it fail with the same message.
		log.Error("host prerequisite", "err", err)
	} else {
		log.Info("host checked", "ip_forward", st.IPForward, "br_netfilter_loaded", st.BrNetfilterLoaded, "bridge_nf_call_iptables", st.BrNetfilter)
	}
	backend, why, err := bridge.ChooseFirewall(f.firewall, bridge.DetectFirewalls(f.name))
	if err != nil {
		return nil, err
	}
	log.Info("firewall backend", "backend", backend, "why", why)
	dp, err := bridge.New(bridge.Config{Instance: f.name, Generation: store.Generation(), Log: log, Firewall: backend,
		Follow: f.firewall == model.FirewallAuto})
	if err != nil {
		return nil, err
	}
	if err := driver.ClaimObjects(log, store, snap, dp, f.discardOrphans); err != nil {
		dp.Close()
		if errors.Is(err, state.ErrUnusable) {
			return nil, stateError{err}
		}
		return nil, err
	}
	// The state is this instance's: rules it left in the other backend
	// are stale.
	if err := dp.RemoveOtherFirewall(); err != nil {
		log.Warn("rules left in the firewall backend mynet no longer uses", "err", err)
	}
	// In cluster mode the peers agent owns the VXLAN port's filter; a
	// single-host run removes one that a run in cluster mode left, which
	// nothing else would.
	if f.cluster.store == "" {
		if err := dp.RemoveVTEPFilter(context.Background()); err != nil {
			log.Warn("VXLAN port filter left from cluster mode", "err", err)
		}
	}
	return dp, nil
}

// serveRequests serves the plugin socket (and the metrics listener, if
// asked) until ctx ends, then shuts the server down.
func serveRequests(ctx context.Context, f serveFlags, drv *driver.Driver, cm *clusterMode, log *slog.Logger, statePath string, chains []string) error {
	deadline, err := requestDeadline()
	if err != nil {
		return err
	}
	router := plugin.NewRouter(log, deadline)
	plugin.Register(router, drv)
	if cm != nil {
		plugin.RegisterCluster(router, cm.agent.Report)
	}
	sock := filepath.Join(cli.PluginDir, f.name+".sock")
	l, err := listenUnix(sock, f.socketGroup)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	// No request may hold dockerd longer than a minute once it has its
	// slot, even one stuck in a kernel call: legacy plugins get no client
	// timeout from the engine. The router bounds each call itself, so that
	// an answered call never commits afterwards (see plugin.NewRouter).
	m, stopMetrics, err := startMetrics(ctx, f, drv, cm, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	var handler http.Handler
	if m != nil {
		handler = m.Middleware(plugin.Limit(router, 64, 30*time.Second, m.Waiting(), m.InFlight()))
	} else {
		handler = plugin.Limit(router, 64, 30*time.Second, nil, nil)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.Info("serving", "socket", sock, "state", statePath, "chains", strings.Join(chains, ","))

	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", sock, err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("shutdown", "err", err)
	}
	return nil
}

// listenUnix opens the plugin socket with mode 0660 (owner root, group gid)
// before any connection can be accepted. The umask covers the window
// between bind and chmod, in which the socket would otherwise be created
// with the process umask's looser mode.
func listenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is served by another process; stop it or choose another --name", path)
	}
	// Nobody answers: a stale socket of a killed instance.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("chown %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// requestDeadlineEnv shortens the router's deadline (a Go duration); it
// exists for tests, which cannot wait 45 s for a deadline to pass.
const requestDeadlineEnv = "MYNET_TEST_REQUEST_DEADLINE"

func requestDeadline() (time.Duration, error) {
	v := os.Getenv(requestDeadlineEnv)
	if v == "" {
		return plugin.DefaultDeadline, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive duration such as 2s", requestDeadlineEnv, v)
	}
	return d, nil
}

// startMetrics serves the metrics on the opt-in listener until ctx ends and
// returns them, to measure requests, and a func that removes the metrics
// socket. Without --metrics-socket or --metrics-addr it returns nil.
func startMetrics(ctx context.Context, f serveFlags, drv *driver.Driver, cm *clusterMode, log *slog.Logger) (*metrics.Metrics, func(), error) {
	if f.metricsSocket == "" && f.metricsAddr == "" {
		return nil, func() {}, nil
	}
	m := metrics.New(func() state.Snapshot { return *drv.Dump() }, log)
	if cm != nil {
		cm.metrics.Store(m.RegisterCluster(cm.sample))
	}
	var l net.Listener
	var err error
	where, cleanup := f.metricsSocket, func() {}
	if where != "" {
		l, err = listenUnix(where, f.socketGroup)
		cleanup = func() { os.Remove(where) }
	} else {
		where = f.metricsAddr
		l, err = net.Listen("tcp", where)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("metrics listener: %w", err)
	}
	handler := m.Handler()
	if f.pprof {
		// Where requests wait matters more here than CPU: sample lock
		// contention and blocking too (a cost, hence only with --pprof).
		runtime.SetMutexProfileFraction(5)
		runtime.SetBlockProfileRate(int(100 * time.Microsecond))
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		handler = mux
	}
	go func() {
		if err := metrics.Serve(ctx, l, handler, log); err != nil {
			log.Error("metrics listener failed", "listen", where, "err", err)
		}
	}()
	log.Info("serving metrics", "listen", where)
	return m, cleanup, nil
}
