package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mynet/mynet/internal/model"
)

// Sentinel errors, wrapped with the network, address or host they concern.
var (
	// ErrSpecMismatch: the network exists in the cluster with another spec.
	ErrSpecMismatch = errors.New("cluster network exists with a different spec")
	// ErrNetworkNotFound: no cluster network of that name.
	ErrNetworkNotFound = errors.New("cluster network not found")
	// ErrNoVNI: every VNI of the configured range is taken.
	ErrNoVNI = errors.New("no free VNI")
	// ErrAddressInUse: another host or endpoint holds the address.
	ErrAddressInUse = errors.New("address claimed")
	// ErrHostIDClash: another live machine registered with this host ID.
	ErrHostIDClash = errors.New("host ID in use by another machine")
	// ErrHostAlive: FreeDeadHost on a host whose liveness key exists.
	ErrHostAlive = errors.New("host is alive")
	// ErrContention: a compare-and-swap lost too many times in a row.
	ErrContention = errors.New("too much contention")
)

// Defaults of Config.
const (
	DefaultRequestTimeout = 5 * time.Second
	DefaultLeaseTTL       = 15 * time.Second
	DefaultVNIMin         = 4096
	DefaultVNIMax         = 1<<24 - 1
	// casAttempts bounds each compare-and-swap loop; every lost round
	// means another writer succeeded, so this is only reached under
	// pathological contention.
	casAttempts = 64
)

// Config configures a Store.
type Config struct {
	// Endpoints of the etcd cluster, as host:port or http(s)://host:port.
	Endpoints []string
	TLS       *tls.Config
	// RequestTimeout bounds every store call (and the dial).
	RequestTimeout time.Duration
	// Root of the key layout; DefaultClusterRoot when empty.
	Root string
	// VNIMin..VNIMax (inclusive) is where VNIs are allocated, lowest first.
	VNIMin, VNIMax uint32
	// LeaseTTL of the liveness key; keepalives are sent every TTL/3.
	LeaseTTL time.Duration
	Logger   *slog.Logger
	Metrics  Metrics
}

// Store is mynet's view of the cluster store. Every method is bounded by
// Config.RequestTimeout (or the caller's earlier deadline) and names the
// store's endpoints in its errors. Deletes (ReleaseAddress, LeaveNetwork)
// are idempotent, so that a queue of them can be replayed once etcd is
// reachable again.
type Store struct {
	cli     *clientv3.Client
	keys    model.ClusterKeys
	cfg     Config
	log     *slog.Logger
	metrics Metrics
	where   string // "cluster store etcd at a:2379,b:2379"
}

// New connects to etcd. The connection is lazy in the client, so New
// succeeds while etcd is down; the first call then fails within its bound.
func New(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("cluster store: no etcd endpoints; give --cluster-store etcd://HOST:2379")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Root == "" {
		cfg.Root = model.DefaultClusterRoot
	}
	if cfg.VNIMin == 0 && cfg.VNIMax == 0 {
		cfg.VNIMin, cfg.VNIMax = DefaultVNIMin, DefaultVNIMax
	}
	if cfg.VNIMin == 0 || cfg.VNIMin > cfg.VNIMax || cfg.VNIMax > DefaultVNIMax {
		return nil, fmt.Errorf("cluster store: VNI range %d-%d is invalid; it must lie within 1-%d", cfg.VNIMin, cfg.VNIMax, DefaultVNIMax)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	where := "cluster store etcd at " + strings.Join(cfg.Endpoints, ",")
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.RequestTimeout,
		// The client's own zap logs would bypass our logger; what it
		// reports reaches us as errors.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return &Store{
		cli:     cli,
		keys:    model.ClusterKeys{Root: cfg.Root},
		cfg:     cfg,
		log:     cfg.Logger,
		metrics: cfg.Metrics,
		where:   where,
	}, nil
}

// Close closes the connection. It does not revoke a registration's lease:
// close the Registration first.
func (s *Store) Close() error { return s.cli.Close() }

// Keys is the store's key layout.
func (s *Store) Keys() model.ClusterKeys { return s.keys }

// call runs one store operation under the request timeout, records its
// duration, and names the store in its error. op names the operation and
// its object, e.g. "claim address 10.77.0.5 on network appnet".
func (s *Store) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	s.metrics.observe(metricOp(op), time.Since(start))
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrSpecMismatch) || errors.Is(err, ErrAddressInUse) || errors.Is(err, ErrHostIDClash) {
		s.metrics.conflict()
	}
	if ctx.Err() != nil {
		if !errors.Is(err, ctx.Err()) { // a gRPC status: keep errors.Is working
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s (is etcd reachable and running?): %w", time.Since(start).Round(time.Millisecond), err)
		}
	}
	return fmt.Errorf("%s: %s: %w", s.where, op, err)
}

// metricOp is the first word of an operation's description, a bounded set
// of label values ("claim", "release", "create", ...).
func metricOp(op string) string {
	w, _, _ := strings.Cut(op, " ")
	return w
}
