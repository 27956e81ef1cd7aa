package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profiler fetches Go profiles from the namespace instance, which -pprof
// starts with --pprof on a metrics socket of its own. The profiles show
// where calls wait (mutex, block and goroutine profiles) and where the
// daemon spends CPU; the kernel side, where most of an endpoint cycle goes,
// is not in them (see docs/benchmarks.md for how it was sampled).
type profiler struct {
	dir    string
	client *http.Client
}

func newProfiler(dir, sock string) *profiler {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	return &profiler{dir: dir, client: &http.Client{Transport: tr, Timeout: time.Minute}}
}

// fetch saves /debug/pprof/<path> as <name> in the profile directory.
func (p *profiler) fetch(ctx context.Context, path, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mynet/debug/pprof/"+path, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: HTTP %d", path, resp.StatusCode)
	}
	f, err := os.Create(filepath.Join(p.dir, name))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// during profiles a phase-4 run at one concurrency: a goroutine dump a
// moment after it starts and a CPU profile of its first two seconds (give
// -api-cycles enough for the run to last that long: at concurrency 64 this
// VM completes about 400 cycles a second), then the mutex and block
// profiles, cumulative since the daemon started, once it is over (call the
// returned func then).
func (p *profiler) during(ctx context.Context, label string) (done func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := p.fetch(ctx, "profile?seconds=2", label+"-cpu.pprof"); err != nil && ctx.Err() == nil {
			logf("pprof: %v", err)
		}
	})
	wg.Go(func() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if err := p.fetch(ctx, "goroutine?debug=1", label+"-goroutines.txt"); err != nil && ctx.Err() == nil {
			logf("pprof: %v", err)
		}
	})
	return func() {
		wg.Wait()
		cancel()
		for _, prof := range []string{"mutex", "block"} {
			if err := p.fetch(context.Background(), prof, label+"-"+prof+".pprof"); err != nil {
				logf("pprof: %v", err)
			}
		}
		logf("pprof: profiles of %s in %s (go tool pprof -top bin/mynet FILE)", label, p.dir)
	}
}
