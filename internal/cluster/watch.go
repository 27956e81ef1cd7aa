package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

// EventType says how an EndpointEvent changes the consumer's view.
type EventType int

const (
	// EventReset carries the whole set of adverts: the consumer keeps
	// these and drops every entry not among them. It is the first event,
	// and follows every relist (after a compaction, or a watch that could
	// not be resumed).
	EventReset EventType = iota
	// EventPut adds or changes one advert.
	EventPut
	// EventDelete removes one advert. Its IP is always set; the rest when
	// the store still had the previous value.
	EventDelete
)

func (t EventType) String() string {
	return [...]string{"reset", "put", "delete"}[t]
}

// EndpointEvent is one change of a network's endpoint adverts.
type EndpointEvent struct {
	Type     EventType
	Adverts  []model.EndpointAdvert
	Revision int64
}

// watchRetry is the pause before a failed list or watch is tried again.
var watchRetry = time.Second

// WatchEndpoints streams the adverts of a cluster network until ctx ends,
// then closes the channel: first the current set (EventReset, read at one
// revision), then each change from the next revision on, so that nothing
// is missed or seen twice. The watch requires a leader, so that a member
// cut off from its cluster cancels it instead of serving stale data; it is
// then resumed from the last revision seen. If that revision has been
// compacted away, the set is listed again and sent as a new EventReset.
// While the store is unreachable nothing is sent: the consumer keeps what
// it has, which is what keeps containers talking through an etcd outage.
func (s *Store) WatchEndpoints(ctx context.Context, network string) <-chan EndpointEvent {
	out := make(chan EndpointEvent, 64)
	go s.watchLoop(ctx, network, 0, out)
	return out
}

// watchLoop lists when rev is 0, then watches from rev.
func (s *Store) watchLoop(ctx context.Context, network string, rev int64, out chan<- EndpointEvent) {
	defer close(out)
	log := s.log.With("network", network)
	for ctx.Err() == nil {
		if rev == 0 {
			advs, r, err := s.Claims(ctx, network)
			if err != nil {
				log.WarnContext(ctx, "cluster endpoint list failed; retrying", "err", err)
				sleep(ctx, watchRetry)
				continue
			}
			if !send(ctx, out, EndpointEvent{Type: EventReset, Adverts: advs, Revision: r}) {
				return
			}
			rev = r + 1
		}
		rev = s.watchFrom(ctx, network, rev, out)
	}
}

// watchFrom follows one watch and returns the revision to resume from,
// 0 to relist.
func (s *Store) watchFrom(ctx context.Context, network string, rev int64, out chan<- EndpointEvent) int64 {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := s.keys.Claims(network)
	wch := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV())
	for resp := range wch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			s.log.InfoContext(ctx, "cluster endpoint watch compacted; listing again",
				"network", network, "from", rev, "compacted", resp.CompactRevision)
			return 0
		}
		if err := resp.Err(); err != nil {
			s.log.WarnContext(ctx, "cluster endpoint watch ended; resuming",
				"network", network, "from", rev, "store", s.where, "err", err)
			sleep(ctx, watchRetry)
			return rev
		}
		for _, ev := range resp.Events {
			e, ok := s.endpointEvent(network, ev)
			if ok && !send(ctx, out, e) {
				return rev
			}
			rev = ev.Kv.ModRevision + 1
		}
	}
	if ctx.Err() == nil {
		sleep(ctx, watchRetry) // closed without an error: the client gave up
	}
	return rev
}

func (s *Store) endpointEvent(network string, ev *clientv3.Event) (EndpointEvent, bool) {
	e := EndpointEvent{Type: EventPut, Revision: ev.Kv.ModRevision}
	var adv model.EndpointAdvert
	kv := ev.Kv
	if ev.Type == mvccpb.DELETE {
		e.Type = EventDelete
		kv = ev.PrevKv
	}
	if kv == nil || json.Unmarshal(kv.Value, &adv) != nil {
		a, err := s.keys.ClaimAddr(network, string(ev.Kv.Key))
		if err != nil || e.Type == EventPut {
			s.log.Warn("ignoring a malformed claim", "key", string(ev.Kv.Key))
			return e, false
		}
		adv = model.EndpointAdvert{IP: a}
	}
	e.Adverts = []model.EndpointAdvert{adv}
	return e, true
}

func send(ctx context.Context, out chan<- EndpointEvent, e EndpointEvent) bool {
	select {
	case out <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
