package peers

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/model"
)

// network is one followed cluster network.
type network struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{} // closed when follow returns

	// mu guards what follows and is held across the dataplane writes of
	// this network, so that the watch and the resync never interleave.
	mu   sync.Mutex
	n    model.Network
	vx   model.VXLAN
	want map[netip.Addr]peer
	// known: want is authoritative (a local copy or a listing of the
	// store); only then may a sync delete entries.
	known     bool
	listed    bool // want came from the store at least once
	broken    bool // a write failed: the next resync repairs it
	lastSync  time.Time
	lastErr   string
	fdb       int // FDB entries after the last successful sync
	removed   bool
	saveTimer *time.Timer // a coalesced save is pending

	saveMu sync.Mutex // held while the local copy is written
}

// peer is a wanted remote endpoint and the host that advertised it ("" when
// it comes from the local copy).
type peer struct {
	model.VXLANPeer
	host string
}

func newNetwork(name string, n model.Network, vx model.VXLAN) *network {
	return &network{name: name, n: n, vx: vx, done: make(chan struct{}), want: map[netip.Addr]peer{}}
}

// snapshot is the wanted peers, sorted by address. mu must be held or the
// watch stopped.
func (nw *network) snapshot() []model.VXLANPeer {
	out := make([]model.VXLANPeer, 0, len(nw.want))
	for _, p := range nw.want {
		out = append(out, p.VXLANPeer)
	}
	slices.SortFunc(out, func(a, b model.VXLANPeer) int { return a.IP.Compare(b.IP) })
	return out
}

// stopSave cancels a pending save and reports whether there was one.
// mu must be held.
func (nw *network) stopSave() bool {
	if nw.saveTimer == nil {
		return false
	}
	nw.saveTimer.Stop()
	nw.saveTimer = nil
	return true
}

// follow programs the network from its local copy, then from the store's
// watch until ctx ends.
func (a *Agent) follow(ctx context.Context, nw *network) {
	defer close(nw.done)
	a.programFromCopy(ctx, nw)
	for e := range a.cfg.Store.WatchEndpoints(ctx, nw.name) {
		a.apply(ctx, nw, e)
	}
}

// programFromCopy syncs the device with the saved peers. Without a copy
// nothing is touched: entries already on the device (a restart of mynet
// alone) stay until the store's listing says otherwise.
func (a *Agent) programFromCopy(ctx context.Context, nw *network) {
	saved, found, err := a.cfg.Local.LoadPeers(nw.name)
	if err != nil {
		a.log.Warn("local copy of cluster peers unreadable; waiting for the store", "network", nw.name, "err", err)
		return
	}
	if !found {
		return
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.listed { // the store was quicker: it is the newer truth
		return
	}
	for _, p := range saved {
		if p.Validate() == nil {
			nw.want[p.IP.Unmap()] = peer{VXLANPeer: p}
		}
	}
	nw.known = true
	a.syncLocked(ctx, nw)
	a.log.Info("cluster peers programmed from the local copy", "network", nw.name, "peers", len(nw.want))
}

// apply changes the wanted peers and the device by one watch event.
func (a *Agent) apply(ctx context.Context, nw *network, e cluster.EndpointEvent) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	newVTEP := false
	switch e.Type {
	case cluster.EventReset:
		want := make(map[netip.Addr]peer, len(e.Adverts))
		for _, adv := range e.Adverts {
			if p, ok := a.peerOf(nw, adv); ok {
				want[p.IP] = p
			}
		}
		newVTEP = vtepsAdded(nw.want, want)
		nw.want, nw.known, nw.listed = want, true, true
		a.syncLocked(ctx, nw)
	case cluster.EventPut:
		for _, adv := range e.Adverts {
			newVTEP = a.put(ctx, nw, adv) || newVTEP
		}
	case cluster.EventDelete:
		for _, adv := range e.Adverts {
			if old, ok := nw.want[adv.IP.Unmap()]; ok {
				delete(nw.want, old.IP)
				a.write(nw, "remove", old, a.cfg.Dataplane.RemovePeer(ctx, nw.n, nw.vx.VNI, old.VXLANPeer))
			}
		}
	}
	a.scheduleSave(nw)
	if newVTEP {
		a.kickFilter()
	}
}

// put applies one new or changed advert; it reports a VTEP not seen
// before on this network.
func (a *Agent) put(ctx context.Context, nw *network, adv model.EndpointAdvert) bool {
	ip := adv.IP.Unmap()
	old, had := nw.want[ip]
	p, ok := a.peerOf(nw, adv)
	if had && (!ok || old.MAC.String() != p.MAC.String() || old.VTEP != p.VTEP) {
		// Gone local, lost its MAC, or moved: drop the old entries
		// first, so that no stale FDB entry survives.
		delete(nw.want, ip)
		a.write(nw, "remove", old, a.cfg.Dataplane.RemovePeer(ctx, nw.n, nw.vx.VNI, old.VXLANPeer))
		had = false
	}
	if !ok {
		return false
	}
	newVTEP := !hasVTEP(nw.want, p.VTEP)
	nw.want[ip] = p
	if !had {
		a.write(nw, "add", p, a.cfg.Dataplane.EnsurePeer(ctx, nw.n, nw.vx.VNI, p.VXLANPeer))
	}
	return newVTEP
}

// write records the outcome of one peer's write; a failed one is left to
// the next resync.
func (a *Agent) write(nw *network, op string, p peer, err error) {
	if err == nil {
		a.log.Debug("cluster peer "+op, "network", nw.name, "peer", p.VXLANPeer.String(), "host", p.host)
		return
	}
	nw.broken, nw.lastErr = true, err.Error()
	a.log.Warn("cluster peer entries not written; the resync retries", "network", nw.name, "op", op, "peer", p.VXLANPeer.String(), "err", err)
}

// peerOf turns an advert into a peer: only other hosts' endpoints with a
// MAC have entries here.
func (a *Agent) peerOf(nw *network, adv model.EndpointAdvert) (peer, bool) {
	if adv.Host == a.cfg.HostID || adv.MAC == "" || adv.VTEP == nw.vx.Local {
		return peer{}, false
	}
	mac, err := net.ParseMAC(adv.MAC)
	p := peer{VXLANPeer: model.VXLANPeer{IP: adv.IP.Unmap(), MAC: mac, VTEP: adv.VTEP.Unmap()}, host: adv.Host}
	if err == nil {
		err = p.Validate()
	}
	if err != nil {
		a.log.Warn("ignoring an unusable endpoint advert", "network", nw.name, "host", adv.Host, "ip", adv.IP, "mac", adv.MAC, "err", err)
		return peer{}, false
	}
	return p, true
}

// syncLocked makes the device's entries the wanted ones and returns how
// many it changed. mu must be held and want known.
func (a *Agent) syncLocked(ctx context.Context, nw *network) int {
	want := nw.snapshot()
	written, deleted, err := a.cfg.Dataplane.SyncPeers(ctx, nw.n, nw.vx.VNI, want)
	if err != nil {
		nw.broken, nw.lastErr = true, err.Error()
		a.log.Warn("cluster peers not synced; retrying at the next resync", "network", nw.name, "err", err)
		return written + deleted
	}
	nw.broken, nw.lastErr, nw.lastSync = false, "", time.Now()
	nw.fdb = countMACs(want)
	return written + deleted
}

func countMACs(ps []model.VXLANPeer) int {
	macs := map[string]bool{}
	for _, p := range ps {
		macs[p.MAC.String()] = true
	}
	return len(macs)
}

func hasVTEP(want map[netip.Addr]peer, vtep netip.Addr) bool {
	for _, p := range want {
		if p.VTEP == vtep {
			return true
		}
	}
	return false
}

func vtepsAdded(old, now map[netip.Addr]peer) bool {
	for _, p := range now {
		if !hasVTEP(old, p.VTEP) {
			return true
		}
	}
	return false
}

// scheduleSave writes the local copy after SaveDelay, once for all the
// changes of that time: a burst of claims costs one bbolt commit, not one
// per event. mu must be held.
func (a *Agent) scheduleSave(nw *network) {
	if nw.saveTimer != nil || nw.removed {
		return
	}
	nw.saveTimer = time.AfterFunc(a.cfg.SaveDelay, func() { a.save(nw) })
}

func (a *Agent) save(nw *network) {
	nw.saveMu.Lock()
	defer nw.saveMu.Unlock()
	nw.mu.Lock()
	if nw.removed {
		nw.mu.Unlock()
		return
	}
	nw.saveTimer = nil
	peers := nw.snapshot()
	nw.mu.Unlock()
	if err := a.cfg.Local.SavePeers(nw.name, peers); err != nil {
		a.log.Warn("local copy of cluster peers not saved", "network", nw.name, "err", err)
	}
}

func parseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }
