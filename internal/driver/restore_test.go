package driver

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// TestRestoreRefusesUnbuildablePool: a pool record the driver cannot
// rebuild (a Store other than state.Store may not validate) fails Restore
// as an unusable state before anything is restored or deleted; before,
// the networks loaded so far were kept and the reconcile deleted the
// kernel objects of the rest as orphans.
func TestRestoreRefusesUnbuildablePool(t *testing.T) {
	const nid = "1111111111111111111111111111111111111111111111111111111111111111"
	fake := drivertest.New()
	fake.Networks[nid] = model.Network{ID: nid, Bridge: "mn-111111111111"}
	d := New(Config{Store: nopStore{}, Dataplane: fake})
	snap := state.Snapshot{
		Networks: []state.Network{{ID: nid, Bridge: "mn-111111111111"}},
		Pools:    []state.Pool{{ID: "ok", Pool: "10.0.0.0/24"}, {ID: "bad", Pool: "garbage"}},
	}
	err := d.RestoreSnapshot(context.Background(), snap)
	if !errors.Is(err, state.ErrUnusable) {
		t.Fatalf("RestoreSnapshot = %v, want an error wrapping state.ErrUnusable", err)
	}
	if len(d.networks)+len(d.pools) != 0 {
		t.Errorf("half a state restored: networks %v, pools %v", slices.Collect(maps.Keys(d.networks)), slices.Collect(maps.Keys(d.pools)))
	}
	if _, ok := fake.Networks[nid]; !ok {
		t.Error("the network's kernel objects were removed")
	}
}

// nopStore is a Store that holds nothing and accepts every write.
type nopStore struct{}

func (nopStore) Load() (state.Snapshot, error)                   { return state.Snapshot{}, nil }
func (nopStore) PutNetwork(state.Network) error                  { return nil }
func (nopStore) DeleteNetwork(string) error                      { return nil }
func (nopStore) PutEndpoint(state.Endpoint) error                { return nil }
func (nopStore) DeleteEndpoint(string, string) error             { return nil }
func (nopStore) PutPool(state.Pool) error                        { return nil }
func (nopStore) DeletePool(string) error                         { return nil }
func (nopStore) AddAddress(string, string, string, string) error { return nil }
func (nopStore) RemoveAddress(string, string) error              { return nil }

// TestRestoreForgetsStaleFlows: the startup asks the dataplane to flush the
// conntrack entries of every address of the local networks' subnets but
// the live endpoints' and the gateways'; a cluster network's subnet, whose
// other addresses are other hosts' live endpoints, is left out.
func TestRestoreForgetsStaleFlows(t *testing.T) {
	const (
		local   = "1111111111111111111111111111111111111111111111111111111111111111"
		cluster = "2222222222222222222222222222222222222222222222222222222222222222"
		eid     = "3333333333333333333333333333333333333333333333333333333333333333"
	)
	fake := drivertest.New()
	d := New(Config{Store: nopStore{}, Dataplane: fake})
	host, ctr := model.VethNames(eid)
	snap := state.Snapshot{
		Networks: []state.Network{
			{ID: local, Bridge: model.BridgeName(local),
				IPv4: []state.Subnet{{Pool: "10.1.0.0/24", Gateway: "10.1.0.1/24"}},
				IPv6: []state.Subnet{{Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}}},
			{ID: cluster, Bridge: model.BridgeName(cluster), Cluster: "appnet", VNI: 42,
				IPv4: []state.Subnet{{Pool: "10.77.0.0/24", Gateway: "10.77.0.1/24"}}},
		},
		Endpoints: []state.Endpoint{{NetworkID: local, ID: eid, HostVeth: host, ContainerVeth: ctr,
			MAC: "02:42:0a:01:00:02", IPv4: "10.1.0.2/24", IPv6: "fd00:1::2/64"}},
	}
	fake.Endpoints[eid] = model.Endpoint{ID: eid, NetworkID: local, HostVeth: host} // its container runs
	if err := d.RestoreSnapshot(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if len(fake.Stale) != 1 {
		t.Fatalf("ForgetStale called %d times, want once", len(fake.Stale))
	}
	got := fake.Stale[0]
	var subnets, keep []string
	for _, p := range got.Subnets {
		subnets = append(subnets, p.String())
	}
	for _, a := range got.Keep {
		keep = append(keep, a.String())
	}
	slices.Sort(subnets)
	slices.Sort(keep)
	if want := []string{"10.1.0.0/24", "fd00:1::/64"}; !slices.Equal(subnets, want) {
		t.Errorf("subnets %v, want %v", subnets, want)
	}
	if want := []string{"10.1.0.1", "10.1.0.2", "fd00:1::1", "fd00:1::2"}; !slices.Equal(keep, want) {
		t.Errorf("kept %v, want %v", keep, want)
	}
}
