// Package drivertest holds a fake of the driver's dataplane for the unit
// tests of the driver and of the protocol above it; the kernel side is
// tested for real in bridge/, internal/daemontest and e2e/.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mynet/mynet/internal/model"
)

// Dataplane is a fake of the driver's Dataplane: it records what the
// driver asked for and refuses what the real one would. Tests read its
// maps under Mu.
type Dataplane struct {
	Mu       sync.Mutex
	Networks map[string]model.Network
	// VXLANs are the cluster networks' VXLAN devices, by network ID.
	VXLANs    map[string]model.VXLAN
	Endpoints map[string]model.Endpoint
	Ports     map[string][]model.PortMapping
	FailNext  error
	Host      []netip.Prefix
	// Foreign are links mynet did not create: the dataplane refuses to
	// build on one, as the real one does, and never changes them.
	Foreign map[string]bool
	// Hooks run outside Mu, so they may block: AfterEnsure when an
	// endpoint's objects exist (its error fails the call, which removes
	// them again), OnFingerprint before each fingerprint.
	AfterEnsure   func(model.Endpoint) error
	OnFingerprint func()
	// OnPorts runs when EnsurePorts is called, before it does anything;
	// its error fails the call.
	OnPorts func(model.Endpoint) error
	// OnEnsureBridge and OnEnsureRules run when EnsureBridge and
	// EnsureRules are called, before they do anything: a test holds a
	// reconcile pass there.
	OnEnsureBridge func(model.Network)
	OnEnsureRules  func()
	// OnSync runs when Sync is called: a test plays a slow janitor there.
	OnSync func()
	// Stale records the calls of ForgetStale.
	Stale []StaleCall
	// Firewall is the backend the fake's rules are in, DockerFirewall
	// the one Docker's are in ("": none seen); FollowFirewall moves the
	// rules when they differ and records what it was given in Moved.
	Firewall, DockerFirewall string
	Moved                    []string
}

// New returns an empty fake.
func New() *Dataplane {
	return &Dataplane{Networks: map[string]model.Network{}, VXLANs: map[string]model.VXLAN{}, Endpoints: map[string]model.Endpoint{}, Ports: map[string][]model.PortMapping{}, Foreign: map[string]bool{}}
}

func (f *Dataplane) fail() error {
	err := f.FailNext
	f.FailNext = nil
	return err
}

func (f *Dataplane) EnsureNetwork(_ context.Context, n model.Network) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	if f.Foreign[n.Bridge] {
		return fmt.Errorf("interface %s already exists and is not mynet's bridge", n.Bridge)
	}
	f.Networks[n.ID] = n
	return nil
}

// EnsureBridge is EnsureNetwork: the fake keeps no rules apart.
func (f *Dataplane) EnsureBridge(ctx context.Context, n model.Network) error {
	f.Mu.Lock()
	hook := f.OnEnsureBridge
	f.Mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return f.EnsureNetwork(ctx, n)
}

// EnsureRules restores the endpoints' ports, as EnsurePorts does for one;
// the networks' rules are part of EnsureBridge in the fake.
func (f *Dataplane) EnsureRules(_ context.Context, _ []model.Network, endpoints []model.Endpoint) ([]string, error) {
	f.Mu.Lock()
	hook := f.OnEnsureRules
	f.Mu.Unlock()
	if hook != nil {
		hook()
	}
	f.Mu.Lock()
	defer f.Mu.Unlock()
	var added []string
	for _, ep := range endpoints {
		if len(f.Ports[ep.ID]) == 0 {
			added = append(added, "ports of "+ep.ID)
		}
		f.Ports[ep.ID] = ep.Ports
	}
	return added, nil
}

func (f *Dataplane) DeleteNetwork(_ context.Context, n model.Network) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	delete(f.Networks, n.ID)
	return nil
}

// EnsureVXLAN needs the network's bridge, as the real one does.
func (f *Dataplane) EnsureVXLAN(_ context.Context, n model.Network, vx model.VXLAN) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	if _, ok := f.Networks[n.ID]; !ok {
		return fmt.Errorf("look up bridge %s of network %s: link not found", n.Bridge, n.ID)
	}
	if err := vx.Validate(); err != nil {
		return err
	}
	f.VXLANs[n.ID] = vx
	return nil
}

func (f *Dataplane) RemoveVXLAN(_ context.Context, n model.Network, vni uint32) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	if vx, ok := f.VXLANs[n.ID]; ok && vx.VNI == vni {
		delete(f.VXLANs, n.ID)
	}
	return nil
}

func (f *Dataplane) EnsureEndpoint(_ context.Context, e model.Endpoint) error {
	f.Mu.Lock()
	if err := f.fail(); err != nil {
		f.Mu.Unlock()
		return err
	}
	if f.Foreign[e.HostVeth] || f.Foreign[e.ContainerVeth] {
		f.Mu.Unlock()
		return fmt.Errorf("interface %s already exists and is not mynet's veth", e.HostVeth)
	}
	f.Endpoints[e.ID] = e
	hook := f.AfterEnsure
	f.Mu.Unlock()
	if hook == nil {
		return nil
	}
	err := hook(e)
	if err != nil { // like the real one, undo what this call made
		f.Mu.Lock()
		delete(f.Endpoints, e.ID)
		f.Mu.Unlock()
	}
	return err
}

func (f *Dataplane) DeleteEndpoint(_ context.Context, e model.Endpoint) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	delete(f.Endpoints, e.ID)
	delete(f.Ports, e.ID) // as the real one: its port rules go with it
	return nil
}

func (f *Dataplane) EndpointExists(e model.Endpoint) (bool, error) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	_, ok := f.Endpoints[e.ID]
	return ok, nil
}

func (f *Dataplane) Sync() {
	f.Mu.Lock()
	hook := f.OnSync
	f.Mu.Unlock()
	if hook != nil {
		hook()
	}
}

// ForgetStale records what it was asked to flush, in Stale.
func (f *Dataplane) ForgetStale(subnets []netip.Prefix, keep []netip.Addr) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	f.Stale = append(f.Stale, StaleCall{Subnets: subnets, Keep: keep})
	return nil
}

// StaleCall is one call of ForgetStale.
type StaleCall struct {
	Subnets []netip.Prefix
	Keep    []netip.Addr
}

func (f *Dataplane) LiveEndpoints() (map[string]bool, error) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	live := map[string]bool{}
	for id := range f.Endpoints {
		live[id] = true
	}
	return live, nil
}

func (f *Dataplane) RemoveOrphans(_ context.Context, nets, eps map[string]bool) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	for id := range f.Networks {
		if !nets[id] {
			delete(f.Networks, id)
		}
	}
	for id := range f.VXLANs { // tagged as their network, as the real ones
		if !nets[id] {
			delete(f.VXLANs, id)
		}
	}
	for id := range f.Endpoints {
		if !eps[id] {
			delete(f.Endpoints, id)
		}
	}
	return nil
}

func (f *Dataplane) HostPrefixes(bool) ([]netip.Prefix, error) { return f.Host, nil }

func (f *Dataplane) SpoofFingerprint() (model.Digests, error) { return model.Digests{}, nil }

func (f *Dataplane) Fingerprint() (model.Digests, error) {
	f.Mu.Lock()
	hook := f.OnFingerprint
	f.Mu.Unlock()
	if hook != nil {
		hook()
	}
	f.Mu.Lock()
	defer f.Mu.Unlock()
	out := model.Digests{}
	for id, n := range f.Networks {
		out["net:"+id] = fmt.Sprint(n, f.VXLANs[id])
	}
	for id, e := range f.Endpoints {
		e.AntiSpoofing = false // the fake has no filters: a repair omits it
		e.Ports = nil          // an ensure of a publishing endpoint passes them; the rules are f.Ports
		out["ep:"+id] = fmt.Sprint(e, f.Ports[id])
	}
	out[model.DigestFirewall] = f.DockerFirewall
	return out, nil
}

// FollowFirewall moves the fake's rules to DockerFirewall when that is
// another backend than Firewall, recording the networks and endpoints it
// got as "net:ID" and "ep:ID".
func (f *Dataplane) FollowFirewall(_ context.Context, rules func() ([]model.Network, []model.Endpoint)) (from, to, why string, err error) {
	f.Mu.Lock()
	docker, from := f.DockerFirewall, f.Firewall
	f.Mu.Unlock()
	if docker == "" || docker == from {
		return "", "", "", nil
	}
	nets, eps := rules()
	f.Mu.Lock()
	defer f.Mu.Unlock()
	if err := f.fail(); err != nil {
		return "", "", "", err
	}
	f.Moved = nil
	for _, n := range nets {
		f.Moved = append(f.Moved, "net:"+n.ID)
	}
	for _, ep := range eps {
		f.Moved = append(f.Moved, "ep:"+ep.ID)
	}
	f.Firewall = docker
	return from, docker, "Docker's rules are in " + docker, nil
}

func (f *Dataplane) EnsurePorts(_ context.Context, _ model.Network, ep model.Endpoint, ports []model.PortMapping) error {
	f.Mu.Lock()
	hook := f.OnPorts
	f.Mu.Unlock()
	if hook != nil {
		if err := hook(ep); err != nil {
			return err
		}
	}
	f.Mu.Lock()
	defer f.Mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	f.Ports[ep.ID] = ports
	return nil
}

func (f *Dataplane) RemovePorts(_ context.Context, ep model.Endpoint, _ []model.PortMapping) error {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	delete(f.Ports, ep.ID)
	return nil
}

// ProbePort pretends a host service listens on 30000.
func (f *Dataplane) ProbePort(_ string, _ netip.Addr, port uint16) error {
	if port == 30000 {
		return errors.New("address already in use")
	}
	return nil
}

func (f *Dataplane) EphemeralPorts() (uint16, uint16) { return 30000, 30002 }
