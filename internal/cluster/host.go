package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

// Registration is a host's presence in the cluster: its registration key
// and its liveness key on a lease kept alive every TTL/3. Close ends it.
type Registration struct {
	s        *Store
	host     model.ClusterHost
	instance string
	lease    atomic.Int64 // clientv3.LeaseID
	up       atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
	closeMu  sync.Once
}

// RegisterHost registers host and keeps its liveness key alive until
// Close. The host ID is taken by compare-and-swap: if a live process with
// this ID runs on another VTEP (a cloned machine with a copied state
// directory), it fails with ErrHostIDClash and the daemon must not start.
// A liveness key of the same VTEP is this host's previous process (a
// restart within the TTL) and is taken over.
//
// If the lease is lost (etcd unreachable for longer than the TTL), Up
// turns false and the registration is retried, with the same check, until
// it succeeds or Close is called. Address claims are not on the lease and
// stay; whether to free them is for a live host to decide (FreeDeadHost).
func (s *Store) RegisterHost(ctx context.Context, host model.ClusterHost) (*Registration, error) {
	if err := model.ValidateClusterName("host ID", host.ID); err != nil {
		return nil, err
	}
	if !host.VTEP.IsValid() {
		return nil, fmt.Errorf("register host %s: no VTEP address; give --vtep-addr or --vtep-iface", host.ID)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Registration{s: s, host: host, instance: hex.EncodeToString(b[:]), done: make(chan struct{})}
	if err := s.call(ctx, "register host "+host.ID, r.acquire); err != nil {
		return nil, err
	}
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	go r.run(loopCtx)
	return r, nil
}

// Up reports whether the liveness lease is held.
func (r *Registration) Up() bool { return r.up.Load() }

// Instance is this process's random identity in the liveness key.
func (r *Registration) Instance() string { return r.instance }

// Close stops the keepalives and revokes the lease, so that the liveness
// key goes at once (claims stay: a restart within the grace period keeps
// its addresses).
func (r *Registration) Close(ctx context.Context) error {
	var err error
	r.closeMu.Do(func() {
		r.cancel()
		<-r.done
		r.setUp(false)
		id := clientv3.LeaseID(r.lease.Load())
		err = r.s.call(ctx, "unregister host "+r.host.ID, func(ctx context.Context) error {
			_, err := r.s.cli.Revoke(ctx, id)
			return err
		})
	})
	return err
}

func (r *Registration) setUp(up bool) {
	r.up.Store(up)
	r.s.metrics.up(up)
}

// acquire grants a lease and puts the liveness and registration keys on
// it (the registration key without it), by compare-and-swap.
func (r *Registration) acquire(ctx context.Context) (retErr error) {
	ttl := int64(r.s.cfg.LeaseTTL / time.Second)
	lease, err := r.s.cli.Grant(ctx, max(ttl, 1))
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_, _ = r.s.cli.Revoke(ctx, lease.ID) // a lease of no key; it expires anyway
		}
	}()
	alive, _ := json.Marshal(model.HostAlive{ID: r.host.ID, VTEP: r.host.VTEP, Instance: r.instance})
	reg, _ := json.Marshal(r.host)
	akey := r.s.keys.Alive(r.host.ID)
	for range casAttempts {
		resp, err := r.s.cli.Get(ctx, akey)
		if err != nil {
			return err
		}
		var rev int64
		if len(resp.Kvs) == 1 {
			var held model.HostAlive
			if err := json.Unmarshal(resp.Kvs[0].Value, &held); err == nil && held.VTEP != r.host.VTEP {
				return fmt.Errorf("%w: host ID %s is alive at VTEP %s, this host's VTEP is %s: a cloned machine? give each host its own --host-id",
					ErrHostIDClash, r.host.ID, held.VTEP, r.host.VTEP)
			}
			rev = resp.Kvs[0].ModRevision
		}
		txn, err := r.s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(akey), "=", rev)).
			Then(clientv3.OpPut(akey, string(alive), clientv3.WithLease(lease.ID)),
				clientv3.OpPut(r.s.keys.Host(r.host.ID), string(reg))).
			Commit()
		if err != nil {
			return err
		}
		if txn.Succeeded {
			r.lease.Store(int64(lease.ID))
			r.setUp(true)
			return nil
		}
	}
	return ErrContention
}

// run keeps the lease alive and re-registers after losing it.
func (r *Registration) run(ctx context.Context) {
	defer close(r.done)
	log := r.s.log.With("host", r.host.ID)
	for {
		ch, err := r.s.cli.KeepAlive(ctx, clientv3.LeaseID(r.lease.Load()))
		if err == nil {
			for range ch { // the client closes ch once the lease cannot be renewed
			}
		}
		if ctx.Err() != nil || r.s.cli.Ctx().Err() != nil { // Close, or the Store's
			return
		}
		r.setUp(false)
		log.WarnContext(ctx, "cluster liveness lease lost; registering again", "store", r.s.where)
		for !r.reacquire(ctx) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.s.cfg.LeaseTTL / 3):
			}
		}
		log.InfoContext(ctx, "cluster liveness lease held again")
	}
}

func (r *Registration) reacquire(ctx context.Context) bool {
	err := r.s.call(ctx, "register host "+r.host.ID, r.acquire)
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, ErrHostIDClash):
		// Another machine took the ID while this one was cut off: the
		// operator must act, so say so loudly on every attempt.
		r.s.log.ErrorContext(ctx, "cluster registration refused", "host", r.host.ID, "err", err)
	default:
		r.s.log.WarnContext(ctx, "cluster registration failed", "host", r.host.ID, "err", err)
	}
	return err == nil
}

// HostStatus is a registered host and whether its liveness key exists.
type HostStatus struct {
	model.ClusterHost
	Alive bool
}

// Hosts lists the registered hosts, alive or not, read at one revision.
func (s *Store) Hosts(ctx context.Context) ([]HostStatus, error) {
	var out []HostStatus
	err := s.call(ctx, "list hosts", func(ctx context.Context) error {
		resp, err := s.cli.Txn(ctx).Then(
			clientv3.OpGet(s.keys.Hosts(), clientv3.WithPrefix()),
			clientv3.OpGet(s.keys.AliveAll(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return err
		}
		alive := map[string]bool{}
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			alive[string(kv.Key)] = true
		}
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			var h model.ClusterHost
			if err := json.Unmarshal(kv.Value, &h); err != nil {
				return fmt.Errorf("decode %s: %w", kv.Key, err)
			}
			out = append(out, HostStatus{ClusterHost: h, Alive: alive[s.keys.Alive(h.ID)]})
		}
		return nil
	})
	return out, err
}
