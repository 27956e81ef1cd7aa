package peers

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/model"
)

// nsExec runs functions on one goroutine locked into a throwaway network
// namespace. The agent calls its dataplane from goroutines of its own,
// which run on threads of the host namespace: every kernel call of the
// test (netlink, and iptables children, which inherit the forking
// thread's namespace) must go through here.
type nsExec struct {
	calls chan func()
	done  chan struct{}
	err   error // of the restore
}

func newNSExec() (*nsExec, error) {
	e := &nsExec{calls: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go e.serve(ready)
	return e, <-ready
}

func (e *nsExec) serve(ready chan<- error) {
	defer close(e.done)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		ready <- err
		return
	}
	defer orig.Close()
	ns, err := netns.New() // switches this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		ready <- err
		return
	}
	defer func() {
		ns.Close()
		if e.err = netns.Set(orig); e.err != nil {
			return // stays locked: the runtime discards the thread
		}
		runtime.UnlockOSThread()
	}()
	ready <- nil
	for fn := range e.calls {
		fn()
	}
}

// do runs fn in the namespace and waits for it. fn must not call t.Fatal.
func (e *nsExec) do(fn func() error) error {
	errc := make(chan error, 1)
	e.calls <- func() { errc <- fn() }
	return <-errc
}

// sh runs a command in the namespace.
func (e *nsExec) sh(name string, args ...string) (string, error) {
	var out []byte
	err := e.do(func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
		}
		return nil
	})
	return string(out), err
}

func (e *nsExec) close() error {
	close(e.calls)
	<-e.done
	return e.err
}

// nsDataplane is a bridge.Dataplane whose every call runs in the test's
// namespace.
type nsDataplane struct {
	d  *bridge.Dataplane
	ex *nsExec
}

func (p nsDataplane) SyncPeers(ctx context.Context, n model.Network, vni uint32, want []model.VXLANPeer) (w, del int, err error) {
	err = p.ex.do(func() error { w, del, err = p.d.SyncPeers(ctx, n, vni, want); return err })
	return w, del, err
}

func (p nsDataplane) EnsurePeer(ctx context.Context, n model.Network, vni uint32, peer model.VXLANPeer) error {
	return p.ex.do(func() error { return p.d.EnsurePeer(ctx, n, vni, peer) })
}

func (p nsDataplane) RemovePeer(ctx context.Context, n model.Network, vni uint32, peer model.VXLANPeer) error {
	return p.ex.do(func() error { return p.d.RemovePeer(ctx, n, vni, peer) })
}

func (p nsDataplane) SyncVTEPFilter(ctx context.Context, port int, vteps []netip.Addr) error {
	return p.ex.do(func() error { return p.d.SyncVTEPFilter(ctx, port, vteps) })
}

func (p nsDataplane) RemoveVTEPFilter(ctx context.Context) error {
	return p.ex.do(func() error { return p.d.RemoveVTEPFilter(ctx) })
}

func (p nsDataplane) entries(ctx context.Context, n model.Network, vni uint32) (bridge.VXLANEntries, error) {
	var es bridge.VXLANEntries
	err := p.ex.do(func() error {
		var err error
		es, err = p.d.VXLANEntries(ctx, n, vni)
		return err
	})
	return es, err
}
