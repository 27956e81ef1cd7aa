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
