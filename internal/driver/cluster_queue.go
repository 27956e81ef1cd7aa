package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// clusterQueue paces the replay of the cluster store deletes that waited
// (ClusterConfig.Queue). Once one delete waits, the later ones queue
// behind it without trying the store, so that they reach it in the order
// the engine asked for them and a stop does not wait for a store that is
// known to be down.
type clusterQueue struct {
	mu      sync.Mutex // one replay at a time
	waiting atomic.Bool
	kick    chan struct{}
}

// Replay backoff: the first retry soon, then less often while the store
// stays down.
const (
	queueRetryMin = 500 * time.Millisecond
	queueRetryMax = 30 * time.Second
)

// releaseClaim releases this host's claim of a in the cluster network, or
// queues the release when the store cannot take it now. It never fails:
// the engine never retries a release.
func (d *Driver) releaseClaim(ctx context.Context, network string, a netip.Addr) {
	cl := d.cfg.Cluster
	if cl == nil {
		d.log.Warn("address of a cluster network released without cluster mode; its claim stays in the store", "cluster", network, "address", a)
		return
	}
	del := state.ClusterDelete{Op: state.OpRelease, Network: network, Host: cl.HostID, Addr: a}
	if !d.queue.waiting.Load() {
		err := cl.Store.ReleaseAddress(ctx, network, a, cl.HostID)
		if err == nil {
			return
		}
		d.log.Warn("cluster store did not take a release; queued", "cluster", network, "address", a, "err", err)
	}
	d.enqueue(del)
}

// leaveCluster takes this host out of a cluster network, or queues that.
func (d *Driver) leaveCluster(ctx context.Context, network string) {
	cl := d.cfg.Cluster
	if cl == nil {
		d.log.Warn("cluster network deleted without cluster mode; this host stays a member in the store", "cluster", network)
		return
	}
	if !d.queue.waiting.Load() {
		deleted, err := cl.Store.LeaveNetwork(ctx, network, cl.HostID)
		if err == nil {
			d.log.Info("left cluster network", "cluster", network, "last_member", deleted)
			return
		}
		d.log.Warn("cluster store did not take a leave; queued", "cluster", network, "err", err)
	}
	d.enqueue(state.ClusterDelete{Op: state.OpLeave, Network: network, Host: cl.HostID})
}

// enqueue persists a delete for the replay and wakes it.
func (d *Driver) enqueue(del state.ClusterDelete) {
	d.queue.waiting.Store(true)
	if _, err := d.cfg.Cluster.Queue.QueueClusterDelete(del); err != nil {
		d.log.Error("could not queue a cluster store delete; it is lost", "op", del.Op, "cluster", del.Network, "address", del.Addr, "err", err)
	}
	select {
	case d.queue.kick <- struct{}{}:
	default:
	}
}

// RunClusterQueue replays the queued cluster store deletes, at once and
// whenever one is queued, retrying with backoff while the store does not
// answer, until ctx ends. Without cluster mode it returns at once.
func (d *Driver) RunClusterQueue(ctx context.Context) {
	if d.cfg.Cluster == nil || d.cfg.Cluster.Queue == nil {
		return
	}
	wait := queueRetryMin
	for {
		var retry <-chan time.Time
		if err := d.ReplayClusterQueue(ctx); err != nil {
			d.log.Warn("cluster store deletes still queued", "retry_in", wait, "err", err)
			retry = time.After(wait)
			wait = min(2*wait, queueRetryMax)
		} else {
			wait = queueRetryMin
		}
		select {
		case <-ctx.Done():
			return
		case <-d.queue.kick:
		case <-retry:
		}
	}
}

// ReplayClusterQueue makes the queued deletes in order and stops at the
// first the store does not take. A release of an address this host holds
// again, or a leave of a network it has again, is dropped: replaying it
// would undo the newer claim or membership.
func (d *Driver) ReplayClusterQueue(ctx context.Context) error {
	cl := d.cfg.Cluster
	d.queue.mu.Lock()
	defer d.queue.mu.Unlock()
	dels, err := cl.Queue.ClusterDeletes()
	if err != nil {
		return err
	}
	if len(dels) > 0 {
		// Left by an earlier run: new deletes queue behind them.
		d.queue.waiting.Store(true)
	}
	for _, del := range dels {
		if !d.superseded(del) {
			if err := d.replayOne(ctx, del); err != nil {
				return fmt.Errorf("replay cluster %s of network %s: %w", del.Op, del.Network, err)
			}
		}
		if err := cl.Queue.DoneClusterDelete(del.Seq); err != nil {
			return err
		}
	}
	// A delete queued meanwhile kicks the loop again, so clearing the
	// flag here cannot strand it.
	d.queue.waiting.Store(false)
	return nil
}

func (d *Driver) replayOne(ctx context.Context, del state.ClusterDelete) error {
	st := d.cfg.Cluster.Store
	switch del.Op {
	case state.OpRelease:
		return st.ReleaseAddress(ctx, del.Network, del.Addr, del.Host)
	case state.OpLeave:
		_, err := st.LeaveNetwork(ctx, del.Network, del.Host)
		return err
	}
	return errors.New("unknown operation " + del.Op)
}

// superseded reports whether a queued delete must not be made any more:
// this host holds its address or network again.
func (d *Driver) superseded(del state.ClusterDelete) bool {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	for _, n := range d.networks {
		if n.Cluster != del.Network {
			continue
		}
		if del.Op == state.OpLeave {
			return true
		}
		d.ipamMu.Lock()
		p := d.pools[n.IPv4[0].Pool]
		held := p != nil && p.InUse(del.Addr)
		d.ipamMu.Unlock()
		if held {
			d.log.Info("dropping a queued release: the address is claimed again", "cluster", del.Network, "address", del.Addr, "network_id", model.Short(n.ID))
		}
		return held
	}
	return false
}
