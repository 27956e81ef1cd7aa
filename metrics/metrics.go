// Package metrics exposes mynet's Prometheus metrics: plugin requests, by
// method, measured by an http.Handler middleware around the router, and the
// requests waiting for and holding a slot of the request limit, which the
// limit reports (see InFlight and Waiting); the
// state's networks, endpoints and pool usage, computed at scrape time from
// a snapshot of the driver's state (nothing is counted on the request path);
// and the reconcile's repairs, which the reconcile increments.
//
// The handler is served only on the opt-in listener of `mynet serve
// --metrics-socket` or `--metrics-addr`.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

const namespace = "mynet"

// ReconcileRepairs counts reconcile passes that found mynet's kernel objects
// changed from outside (a deleted bridge, a flushed chain, an orphan) and
// repaired them. The reconcile increments it; it is process-wide so that
// the increment needs no handle, and every registry made by New exports it.
var ReconcileRepairs = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: namespace, Name: "reconcile_repairs_total",
	Help: "Reconcile passes that found mynet's links or rules changed from outside and repaired them.",
})

// ReconcileErrors counts reconcile passes that ended with an error (the
// error is in the log).
var ReconcileErrors = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: namespace, Name: "reconcile_errors_total",
	Help: "Reconcile passes that ended with an error; see the log.",
})

// ReconcilePass is the time of each pass of the reconcile loop, by kind:
// "periodic" (the fingerprint comparison of each interval), "recheck" (every
// tenth interval, which compares everything) and "full" (SIGHUP). A pass
// that holds endpoint calls up does so for at most this long; the
// benchmark's phase 9 reads it.
var ReconcilePass = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: namespace, Name: "reconcile_pass_seconds",
	Help:    "Time of each reconcile pass, by kind: periodic, recheck (every tenth interval) or full (SIGHUP).",
	Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
}, []string{"pass"})

// ObserveReconcilePass records one pass in ReconcilePass; the driver's
// loop calls it through driver.Config.ObservePass.
func ObserveReconcilePass(kind string, d time.Duration) {
	ReconcilePass.WithLabelValues(kind).Observe(d.Seconds())
}

// FirewallSwitches counts reconcile passes that moved mynet's rules to the
// firewall backend dockerd was restarted with (serve --firewall auto).
var FirewallSwitches = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: namespace, Name: "firewall_switches_total",
	Help: "Reconcile passes that moved mynet's rules to the firewall backend dockerd now uses.",
})

// OtherMethod labels requests to paths that are not plugin methods (answered
// 404 or 405), so that arbitrary paths cannot create label values.
const OtherMethod = "other"

// stateTimeout bounds the wait for the driver's state at scrape time: a
// driver stuck behind a kernel call must not hang the scrape, whose request
// metrics are then most useful.
const stateTimeout = 5 * time.Second

// Metrics is one registry with mynet's collectors.
type Metrics struct {
	reg      *prometheus.Registry
	log      *slog.Logger
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inFlight prometheus.Gauge
	waiting  prometheus.Gauge
}

// New returns metrics whose state gauges call snapshot at each scrape;
// snapshot may be nil (no state gauges). log may be nil.
func New(snapshot func() state.Snapshot, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Plugin API requests served, by method (NetworkDriver.CreateNetwork, IpamDriver.RequestAddress, ...).",
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "request_errors_total",
			Help: "Plugin API requests answered with an error, by method and HTTP status (400: bad request, 500: failed, 503: busy).",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time to answer a plugin API request, by method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "requests_in_flight",
			Help: "Plugin API requests being served now: holding one of the request limit's slots (a request answered at the last-resort bound holds it until its rollback ends).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "requests_waiting",
			Help: "Plugin API requests waiting for a slot of the request limit; after 30 s they are refused with a 503.",
		}),
	}
	m.reg.MustRegister(m.requests, m.errors, m.latency, m.inFlight, m.waiting, ReconcileRepairs, ReconcileErrors, ReconcilePass, FirewallSwitches,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if snapshot != nil {
		m.reg.MustRegister(&stateCollector{snapshot: snapshot})
	}
	return m
}

// InFlight is the mynet_requests_in_flight gauge and Waiting the
// mynet_requests_waiting gauge, for the request limit (plugin.Limit) to
// keep: only it knows whether a request is being served or still waits
// for a slot. The middleware sits outside the limit, so that the limit's
// refusals are counted and timed too.
func (m *Metrics) InFlight() prometheus.Gauge { return m.inFlight }

// Waiting: see InFlight.
func (m *Metrics) Waiting() prometheus.Gauge { return m.waiting }

// Registry is the registry behind Handler, for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text (or OpenMetrics) format.
// A collector that fails leaves its metrics out instead of failing the
// whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:          slogAdapter{m.log},
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// methodRE is the shape of plugin method paths: /Plugin.Activate,
// /NetworkDriver.CreateNetwork, /Mynet.State.
var methodRE = regexp.MustCompile(`^/[A-Za-z]+\.[A-Za-z]+$`)

// Middleware measures every request to next. The method is the URL path
// without its slash; requests the router did not route (404, 405) are
// counted as "other", so the label values are bounded by the routes.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		method := OtherMethod
		if rec.status != http.StatusNotFound && rec.status != http.StatusMethodNotAllowed && methodRE.MatchString(r.URL.Path) {
			method = r.URL.Path[1:]
		}
		m.requests.WithLabelValues(method).Inc()
		m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		if rec.status >= 400 {
			m.errors.WithLabelValues(method, strconv.Itoa(rec.status)).Inc()
		}
	})
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// stateCollector computes the state gauges from a snapshot at scrape time.
type stateCollector struct {
	snapshot func() state.Snapshot
}

var (
	descNetworks = prometheus.NewDesc(namespace+"_networks",
		"Networks in mynet's state.", nil, nil)
	descEndpoints = prometheus.NewDesc(namespace+"_endpoints",
		"Endpoints (container attachments) in mynet's state.", nil, nil)
	descNetworkEndpoints = prometheus.NewDesc(namespace+"_network_endpoints",
		"Endpoints of each network.", []string{"network_id", "bridge"}, nil)
	descPoolInUse = prometheus.NewDesc(namespace+"_pool_addresses_in_use",
		"Addresses allocated in each of mynet's IPAM pools, gateways included.", []string{"pool", "network_id"}, nil)
	descPoolSize = prometheus.NewDesc(namespace+"_pool_addresses",
		"Addresses in each IPAM pool's range (its --ip-range, else its subnet), network and broadcast addresses included.", []string{"pool", "network_id"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNetworks, descEndpoints, descNetworkEndpoints, descPoolInUse, descPoolSize} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	snap, err := c.get()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descNetworks, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(descNetworks, prometheus.GaugeValue, float64(len(snap.Networks)))
	ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(len(snap.Endpoints)))
	perNet := map[string]int{}
	for _, e := range snap.Endpoints {
		perNet[e.NetworkID]++
	}
	for _, n := range snap.Networks {
		ch <- prometheus.MustNewConstMetric(descNetworkEndpoints, prometheus.GaugeValue, float64(perNet[n.ID]), model.Short(n.ID), n.Bridge)
	}
	for _, p := range snap.Pools {
		nid := model.Short(p.NetworkID)
		ch <- prometheus.MustNewConstMetric(descPoolInUse, prometheus.GaugeValue, float64(len(p.Addrs)), p.ID, nid)
		if size, ok := poolSize(p); ok {
			ch <- prometheus.MustNewConstMetric(descPoolSize, prometheus.GaugeValue, size, p.ID, nid)
		}
	}
}

func (c *stateCollector) get() (state.Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	done := make(chan state.Snapshot, 1)
	go func() { done <- c.snapshot() }()
	select {
	case s := <-done:
		return s, nil
	case <-ctx.Done():
		return state.Snapshot{}, fmt.Errorf("mynet's state was busy for %v; state gauges left out of this scrape", stateTimeout)
	}
}

// poolSize is the number of addresses in the pool's range.
func poolSize(p state.Pool) (float64, bool) {
	s := p.Range
	if s == "" {
		s = p.Pool
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return 0, false
	}
	return math.Exp2(float64(pfx.Addr().BitLen() - pfx.Bits())), true
}

// CheckAddr accepts a host:port whose host is a loopback address: the
// metrics must never be reachable from the network unless the operator
// puts a proxy of their choosing in front.
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %q: want 127.0.0.1:PORT or [::1]:PORT: %w", addr, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("--metrics-addr %q: port %q must be a number from 1 to 65535", addr, port)
	}
	if strings.EqualFold(host, "localhost") {
		return fmt.Errorf("--metrics-addr %q: give the loopback address itself (127.0.0.1:%s or [::1]:%s), not a name that could resolve elsewhere", addr, port, port)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return fmt.Errorf("--metrics-addr %q: only loopback addresses are allowed (127.0.0.1:%s or [::1]:%s); to scrape from elsewhere use --metrics-socket behind a proxy of your choice", addr, port, port)
	}
	return nil
}

// Serve serves h on l until ctx is done; it returns nil on a clean stop.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		<-ctx.Done()
		shCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shCtx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
