package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mynet/mynet/internal/model"
)

// fakeDataplane records what the driver asked for; the kernel side is
// tested for real in bridge/ and e2e/.
type fakeDataplane struct {
	mu        sync.Mutex
	networks  map[string]model.Network
	endpoints map[string]model.Endpoint
	ports     map[string][]model.PortMapping
	failNext  error
	host      []netip.Prefix
	// foreign are links mynet did not create: the dataplane refuses to
	// build on one, as the real one does, and never changes them.
	foreign map[string]bool
	// Hooks run outside mu, so they may block: afterEnsure when an
	// endpoint's objects exist (its error fails the call, which removes
	// them again), onFingerprint before each fingerprint.
	afterEnsure   func(model.Endpoint) error
	onFingerprint func()
}

func newFake() *fakeDataplane {
	return &fakeDataplane{networks: map[string]model.Network{}, endpoints: map[string]model.Endpoint{}, ports: map[string][]model.PortMapping{}, foreign: map[string]bool{}}
}

func (f *fakeDataplane) fail() error {
	err := f.failNext
	f.failNext = nil
	return err
}

func (f *fakeDataplane) EnsureNetwork(_ context.Context, n model.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	if f.foreign[n.Bridge] {
		return fmt.Errorf("interface %s already exists and is not mynet's bridge", n.Bridge)
	}
	f.networks[n.ID] = n
	return nil
}

func (f *fakeDataplane) DeleteNetwork(_ context.Context, n model.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.networks, n.ID)
	return nil
}

func (f *fakeDataplane) EnsureEndpoint(_ context.Context, e model.Endpoint) error {
	f.mu.Lock()
	if err := f.fail(); err != nil {
		f.mu.Unlock()
		return err
	}
	if f.foreign[e.HostVeth] || f.foreign[e.ContainerVeth] {
		f.mu.Unlock()
		return fmt.Errorf("interface %s already exists and is not mynet's veth", e.HostVeth)
	}
	f.endpoints[e.ID] = e
	hook := f.afterEnsure
	f.mu.Unlock()
	if hook == nil {
		return nil
	}
	err := hook(e)
	if err != nil { // like the real one, undo what this call made
		f.mu.Lock()
		delete(f.endpoints, e.ID)
		f.mu.Unlock()
	}
	return err
}

func (f *fakeDataplane) DeleteEndpoint(_ context.Context, e model.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.endpoints, e.ID)
	delete(f.ports, e.ID) // as the real one: its port rules go with it
	return nil
}

func (f *fakeDataplane) EndpointExists(e model.Endpoint) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.endpoints[e.ID]
	return ok, nil
}

func (f *fakeDataplane) Sync() {}

func (f *fakeDataplane) LiveEndpoints() (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	live := map[string]bool{}
	for id := range f.endpoints {
		live[id] = true
	}
	return live, nil
}

func (f *fakeDataplane) RemoveOrphans(_ context.Context, nets, eps map[string]bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.networks {
		if !nets[id] {
			delete(f.networks, id)
		}
	}
	for id := range f.endpoints {
		if !eps[id] {
			delete(f.endpoints, id)
		}
	}
	return nil
}

func (f *fakeDataplane) HostPrefixes(bool) ([]netip.Prefix, error) { return f.host, nil }

func (f *fakeDataplane) SpoofFingerprint() (model.Digests, error) { return model.Digests{}, nil }

func (f *fakeDataplane) Fingerprint() (model.Digests, error) {
	f.mu.Lock()
	hook := f.onFingerprint
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := model.Digests{}
	for id, n := range f.networks {
		out["net:"+id] = fmt.Sprint(n)
	}
	for id, e := range f.endpoints {
		e.AntiSpoofing = false // the fake has no filters: a repair omits it
		out["ep:"+id] = fmt.Sprint(e, f.ports[id])
	}
	return out, nil
}

func (f *fakeDataplane) EnsurePorts(_ context.Context, _ model.Network, ep model.Endpoint, ports []model.PortMapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	f.ports[ep.ID] = ports
	return nil
}

func (f *fakeDataplane) RemovePorts(_ context.Context, ep model.Endpoint, _ []model.PortMapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ports, ep.ID)
	return nil
}

// ProbePort pretends a host service listens on 30000.
func (f *fakeDataplane) ProbePort(_ string, _ netip.Addr, port uint16) error {
	if port == 30000 {
		return errors.New("address already in use")
	}
	return nil
}

func (f *fakeDataplane) EphemeralPorts() (uint16, uint16) { return 30000, 30002 }
