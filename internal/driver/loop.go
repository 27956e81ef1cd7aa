package driver

import (
	"context"
	"os"
	"time"
)

// Counter counts events; a prometheus.Counter is one.
type Counter interface{ Inc() }

// recheckEvery is how many ticks pass between passes that do not trust
// the fingerprint (see Recheck), when mynet changed something since the
// last one (recheckUseful).
const recheckEvery = 10

// ReconcileLoop repairs mynet's kernel objects every interval (a cheap
// fingerprint comparison when nothing changed; no ticks when interval is
// 0) and fully on each signal from hup, which the caller feeds with
// SIGHUP, as an operator would ask after a firewall reload. It returns
// when ctx ends; a pass under way then finishes, since one cut short would
// roll back repairs it had made. Passes that repaired something and
// passes that failed are counted in Config.Repairs and
// Config.ReconcileErrors.
func (d *Driver) ReconcileLoop(ctx context.Context, interval time.Duration, hup <-chan os.Signal) {
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for n := 1; ; n++ {
		full, kind := false, "periodic"
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if n%recheckEvery == 0 && d.recheckUseful() {
				d.Recheck()
				kind = "recheck"
			}
		case <-hup:
			full, kind = true, "full"
			d.log.Info("SIGHUP: reconciling everything")
		}
		start := time.Now()
		repaired, err := d.Reconcile(context.WithoutCancel(ctx), full)
		if d.cfg.ObservePass != nil {
			d.cfg.ObservePass(kind, time.Since(start))
		}
		if err != nil {
			inc(d.cfg.ReconcileErrors)
			d.log.Error("reconcile", "err", err)
		}
		if repaired {
			inc(d.cfg.Repairs)
		}
	}
}

func inc(c Counter) {
	if c != nil {
		c.Inc()
	}
}
