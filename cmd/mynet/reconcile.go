package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mynet/mynet/metrics"
	"github.com/mynet/mynet/plugin"
)

// stateError marks a state file mynet cannot use; main exits with 78 on it.
type stateError struct{ err error }

func (e stateError) Error() string { return e.err.Error() }
func (e stateError) Unwrap() error { return e.err }

// recheckEvery is how many ticks pass between checks that do not trust the
// fingerprint (see plugin.Driver.Recheck).
const recheckEvery = 10

// reconcileLoop repairs mynet's kernel objects every interval (a cheap
// fingerprint comparison when nothing changed) and fully on SIGHUP, as an
// operator would ask after a firewall reload.
func reconcileLoop(ctx context.Context, drv *plugin.Driver, interval time.Duration, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for n := 1; ; n++ {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if n%recheckEvery == 0 {
				drv.Recheck()
			}
		case <-hup:
			full = true
			log.Info("SIGHUP: reconciling everything")
		}
		// A pass under way at shutdown finishes: one cut short would roll
		// back repairs it had made.
		repaired, err := drv.Reconcile(context.WithoutCancel(ctx), full)
		if err != nil {
			metrics.ReconcileErrors.Inc()
			log.Error("reconcile", "err", err)
		}
		if repaired {
			metrics.ReconcileRepairs.Inc()
		}
	}
}
