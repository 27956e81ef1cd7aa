package driver

import (
	"strings"

	"github.com/mynet/mynet/internal/model"
)

// touch records that mynet is about to change the kernel objects of a
// network or an endpoint (kind as in commitCreate), under the keys of
// their digests (model.Digests), so that a pass takes the change for its
// own and not for damage from outside.
func (d *Driver) touch(kind, id string) {
	var keys []string
	if kind == "network" {
		// mynet's chains come and go with the first and last network, and
		// the anti-spoofing table with the last one.
		keys = []string{"net:" + id, "", "spoof"}
	} else {
		// The first endpoint under anti-spoofing creates the table.
		host, _ := model.VethNames(id)
		keys = []string{"ep:" + id, "veth:" + host, "spoof"}
	}
	d.touchMu.Lock()
	defer d.touchMu.Unlock()
	n := d.changes.Add(1)
	if d.touched == nil {
		d.touched = map[string]uint64{}
	}
	for _, k := range keys {
		d.touched[k] = n
	}
}

// changed returns the digest keys of the objects that changed since the
// last pass, and of those the ones mynet did not touch since: changes made
// from outside, even while mynet changed other objects. A change from
// outside to an object mynet changed in the same interval is not told
// apart; the recheck catches it.
func (d *Driver) changed(fp, sfp model.Digests) (all, outside []string) {
	d.touchMu.Lock()
	defer d.touchMu.Unlock()
	all = append(d.fingerprint.Changed(fp), d.spoofPrint.Changed(sfp)...)
	for _, k := range all {
		if _, own := d.touched[k]; !own {
			outside = append(outside, k)
		}
	}
	// A network or endpoint mynet touched may have changed back (a bridge
	// created, then deleted from outside): it counts as changed too. Not so
	// the shared keys every such change touches, which would make a repair
	// ensure every network and anti-spoofing filter.
	for k := range d.touched {
		if strings.HasPrefix(k, "net:") || strings.HasPrefix(k, "ep:") {
			all = append(all, k)
		}
	}
	return all, outside
}

// adopt takes the digests in as the state of mynet's objects as of the
// changes count n. With verify, the objects mynet changed until then are
// ensured again by the next pass (see verify); a repair pass has just
// ensured them.
func (d *Driver) adopt(fp, sfp model.Digests, n uint64, verify bool) {
	d.fingerprint, d.spoofPrint, d.adopted = fp, sfp, n
	d.touchMu.Lock()
	defer d.touchMu.Unlock()
	for k, v := range d.touched {
		if v > n {
			continue
		}
		delete(d.touched, k)
		if verify {
			if d.suspects == nil {
				d.suspects = map[string]bool{}
			}
			d.suspects[k] = true
		}
	}
}

// quickPass does a pass's common cases while container starts and stops go
// on: nothing changed, or only mynet itself changed things. Taking the
// fingerprints (iptables-save and link dumps) under opMu alone held every
// endpoint call up for 60-90 ms at 1000 endpoints, every interval. It
// reports done false when the pass needs opMu alone after all: something
// changed from outside, an endpoint's container died, or (busy) an
// endpoint call was under way, so that the fingerprints may hold half of
// its change.
func (d *Driver) quickPass() (done, busy bool, err error) {
	d.opMu.RLock() // network operations hold it alone: they wait
	defer d.opMu.RUnlock()
	if d.fingerprint == nil {
		return false, false, nil
	}
	start := d.changes.Load()
	if d.inflight.Load() != 0 {
		return false, true, nil
	}
	fp, sfp, err := d.fingerprints()
	if err != nil {
		return false, false, err
	}
	var live map[string]bool
	dirty := start != d.adopted
	if dirty {
		if live, err = d.cfg.Dataplane.LiveEndpoints(); err != nil {
			return false, false, err
		}
	}
	if d.inflight.Load() != 0 || d.changes.Load() != start {
		return false, true, nil
	}
	if _, outside := d.changed(fp, sfp); len(outside) > 0 {
		return false, false, nil // a repair needs opMu alone
	}
	if !dirty {
		return true, false, nil
	}
	// Only mynet itself changed things since the last pass: take in the
	// new fingerprints.
	if !d.allLive(live) {
		return false, false, nil // its container died: dropping it needs opMu alone
	}
	d.adopt(fp, sfp, start, true)
	return true, false, nil
}

// allLive reports whether every committed endpoint is in live.
func (d *Driver) allLive(live map[string]bool) bool {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	for id := range d.endpoints {
		if !live[id] {
			return false
		}
	}
	return true
}

// fingerprints returns the digests of mynet's links and rules and of its
// anti-spoofing table.
func (d *Driver) fingerprints() (fp, sfp model.Digests, err error) {
	// A veth whose endpoint was just deleted may still be waiting for the
	// janitor: a fingerprint with it, taken in as mynet's own, would make
	// the next pass see its deletion as damage from outside.
	d.cfg.Dataplane.Sync()
	if fp, err = d.cfg.Dataplane.Fingerprint(); err != nil {
		return nil, nil, err
	}
	if sfp, err = d.cfg.Dataplane.SpoofFingerprint(); err != nil {
		return nil, nil, err
	}
	return fp, sfp, nil
}
