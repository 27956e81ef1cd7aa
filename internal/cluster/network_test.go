package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

func TestCreateOrJoinNetwork(t *testing.T) {
	s := newStore(t, nil, func(c *Config) { c.VNIMin, c.VNIMax = 100, 102 })
	ctx := ctxT(t)
	app := spec("app", "10.77.0.0/24", "10.77.0.1")
	other := app
	other.Subnet, other.MTU = netip.MustParsePrefix("10.78.0.0/24"), 1400

	steps := []struct {
		name      string
		spec      model.ClusterSpec
		host      string
		wantErr   error
		errHas    []string
		wantVNI   uint32
		wantHosts []string
	}{
		{name: "first create", spec: app, host: "a", wantVNI: 100, wantHosts: []string{"a"}},
		{name: "same host again", spec: app, host: "a", wantVNI: 100, wantHosts: []string{"a"}},
		{name: "join", spec: app, host: "b", wantVNI: 100, wantHosts: []string{"a", "b"}},
		{name: "different spec refused", spec: other, host: "c", wantErr: ErrSpecMismatch,
			errHas: []string{"subnet: 10.77.0.0/24 in the cluster, 10.78.0.0/24 here", "mtu: 0 in the cluster, 1400 here", "cluster store etcd at http://127.0.0.1:"}},
		{name: "second network gets the next VNI", spec: spec("db", "10.79.0.0/24", "10.79.0.1"), host: "c", wantVNI: 101, wantHosts: []string{"c"}},
		{name: "bad name", spec: spec("a/b", "10.80.0.0/24", "10.80.0.1"), host: "a", wantErr: model.ErrInvalidClusterName},
		{name: "bad host", spec: app, host: "", wantErr: model.ErrInvalidClusterName},
		{name: "third network", spec: spec("x", "10.81.0.0/24", "10.81.0.1"), host: "a", wantVNI: 102},
		{name: "range exhausted", spec: spec("y", "10.82.0.0/24", "10.82.0.1"), host: "a", wantErr: ErrNoVNI, errHas: []string{"100-102"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			rec, err := s.CreateOrJoinNetwork(ctx, st.spec, st.host)
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("err = %v, want %v", err, st.wantErr)
			}
			for _, h := range st.errHas {
				if !strings.Contains(err.Error(), h) {
					t.Errorf("error %q does not name %q", err, h)
				}
			}
			if err != nil {
				return
			}
			if rec.VNI != st.wantVNI {
				t.Errorf("VNI = %d, want %d", rec.VNI, st.wantVNI)
			}
			if st.wantHosts != nil && !slices.Equal(rec.Members, st.wantHosts) {
				t.Errorf("members = %v, want %v", rec.Members, st.wantHosts)
			}
			got, err := s.Network(ctx, st.spec.Name)
			if err != nil || got.VNI != rec.VNI || !slices.Equal(got.Members, rec.Members) {
				t.Errorf("stored %+v (%v), returned %+v", got, err, rec)
			}
		})
	}
	if _, err := s.Network(ctx, "nosuch"); !errors.Is(err, ErrNetworkNotFound) {
		t.Errorf("Network(nosuch) = %v, want ErrNetworkNotFound", err)
	}
}

func TestLeaveNetwork(t *testing.T) {
	s := newStore(t, nil, nil)
	ctx := ctxT(t)
	app := spec("app", "10.77.0.0/24", "10.77.0.1")
	for _, h := range []string{"a", "b"} {
		if _, err := s.CreateOrJoinNetwork(ctx, app, h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("b")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		host        string
		wantDeleted bool
		wantMembers []string // nil: network gone
	}{
		{"a", false, []string{"b"}},
		{"a", false, []string{"b"}}, // replayed leave
		{"c", false, []string{"b"}}, // never joined
		{"b", true, nil},
		{"b", false, nil}, // replayed after the network is gone
	}
	for i, st := range steps {
		deleted, err := s.LeaveNetwork(ctx, "app", st.host)
		if err != nil || deleted != st.wantDeleted {
			t.Fatalf("step %d: leave %s = %v, %v; want %v", i, st.host, deleted, err, st.wantDeleted)
		}
		rec, err := s.Network(ctx, "app")
		if st.wantMembers == nil {
			if !errors.Is(err, ErrNetworkNotFound) {
				t.Fatalf("step %d: network still there: %+v, %v", i, rec, err)
			}
			continue
		}
		if err != nil || !slices.Equal(rec.Members, st.wantMembers) {
			t.Fatalf("step %d: members %v (%v), want %v", i, rec.Members, err, st.wantMembers)
		}
	}
	if k := keys(t, s); len(k) != 0 {
		t.Errorf("the last leave left keys behind: %v", k)
	}
	// The VNI is free again: a new network gets the lowest one.
	rec, err := s.CreateOrJoinNetwork(ctx, spec("again", "10.78.0.0/24", "10.78.0.1"), "a")
	if err != nil || rec.VNI != DefaultVNIMin {
		t.Errorf("new network after delete: VNI %d (%v), want %d", rec.VNI, err, DefaultVNIMin)
	}
}

// TestCreateRace: hosts on their own clients creating the same network at
// once end with one record, one VNI and every host a member; creating
// different networks at once gives each its own VNI.
func TestCreateRace(t *testing.T) {
	const hosts = 8
	stores := make([]*Store, hosts)
	for i := range stores {
		stores[i] = newStore(t, nil, nil)
	}
	ctx := ctxT(t)
	app := spec("app", "10.77.0.0/24", "10.77.0.1")
	recs := make([]model.ClusterNetwork, hosts)
	errs := make([]error, hosts)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range hosts {
		wg.Go(func() {
			<-start
			recs[i], errs[i] = stores[i].CreateOrJoinNetwork(ctx, app, fmt.Sprintf("h%d", i))
			if errs[i] == nil {
				_, errs[i] = stores[i].CreateOrJoinNetwork(ctx, spec(fmt.Sprintf("n%d", i), "10.88.0.0/24", "10.88.0.1"), "x")
			}
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		if recs[i].VNI != recs[0].VNI {
			t.Errorf("host %d got VNI %d, host 0 got %d", i, recs[i].VNI, recs[0].VNI)
		}
	}
	all, err := stores[0].Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vnis := map[uint32]string{}
	for _, n := range all {
		if prev, dup := vnis[n.VNI]; dup {
			t.Errorf("VNI %d held by %s and %s", n.VNI, prev, n.Spec.Name)
		}
		vnis[n.VNI] = n.Spec.Name
		if n.Spec.Name == "app" && len(n.Members) != hosts {
			t.Errorf("app has members %v, want %d hosts", n.Members, hosts)
		}
	}
	if len(all) != hosts+1 || len(vnis) != hosts+1 {
		t.Errorf("%d networks with %d VNIs, want %d", len(all), len(vnis), hosts+1)
	}
	vkeys := 0
	for _, k := range keys(t, stores[0]) {
		if strings.HasPrefix(k, "/vnis/") {
			vkeys++
		}
	}
	if vkeys != hosts+1 {
		t.Errorf("%d VNI keys for %d networks: a lost create leaked its VNI", vkeys, hosts+1)
	}
}
