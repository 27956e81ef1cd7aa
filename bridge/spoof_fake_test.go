package bridge

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// fakeSpoofFilter keeps the veths under the filter in a map, so that the
// Dataplane's side of the anti-spoofing seam (which endpoints it refuses,
// which veths it selects for removal) is tested without nftables.
type fakeSpoofFilter struct {
	veths   map[string]model.Endpoint
	table   bool     // whether the filter's table exists
	ensured []string // veths passed to ensure, in order
}

func (f *fakeSpoofFilter) put(ep model.Endpoint) {
	if f.veths == nil {
		f.veths = map[string]model.Endpoint{}
	}
	f.veths[ep.HostVeth] = ep
	f.table = true
}

func (f *fakeSpoofFilter) ensure(ep model.Endpoint) (bool, error) {
	f.ensured = append(f.ensured, ep.HostVeth)
	_, had := f.veths[ep.HostVeth]
	f.put(ep)
	return !had, nil
}

func (f *fakeSpoofFilter) remove(selected func(veth string) bool, dropEmptyTable bool) error {
	maps.DeleteFunc(f.veths, func(veth string, _ model.Endpoint) bool { return selected(veth) })
	if dropEmptyTable && len(f.veths) == 0 {
		f.table = false
	}
	return nil
}

func (f *fakeSpoofFilter) fingerprint() (model.Digests, error) {
	out := model.Digests{}
	for veth, ep := range f.veths {
		out["veth:"+veth] = fmt.Sprintf("port mac=%s ipv4=%v", ep.MAC, ep.Addresses)
	}
	return out, nil
}

func (f *fakeSpoofFilter) hasElements() (bool, error) { return len(f.veths) > 0, nil }

func (f *fakeSpoofFilter) close() {}

func (f *fakeSpoofFilter) vethNames() []string {
	names := []string{}
	for veth := range f.veths {
		names = append(names, veth)
	}
	slices.Sort(names)
	return names
}

// TestSpoofCheckSeam checks what the Dataplane decides before the filter:
// endpoints the filter cannot describe never reach it, and each removal
// selects the veths it should, keeping the table where it should.
func TestSpoofCheckSeam(t *testing.T) {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	eps := []model.Endpoint{
		spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2"),
		spoofEndpoint(n, eid2, "02:00:00:00:00:02", "10.1.0.3"),
		spoofEndpoint(n, eid3, "02:00:00:00:00:03", "10.1.0.4"),
	}
	for _, tc := range []struct {
		name      string
		do        func(d *Dataplane) error
		wantVeths []model.Endpoint
		wantTable bool
	}{
		{"RemoveSpoofCheck takes one veth, keeps the table",
			func(d *Dataplane) error { return d.RemoveSpoofCheck(eps[1]) }, []model.Endpoint{eps[0], eps[2]}, true},
		{"RemoveSpoofCheck of the last veths keeps the table",
			func(d *Dataplane) error {
				for _, ep := range eps {
					if err := d.RemoveSpoofCheck(ep); err != nil {
						return err
					}
				}
				return nil
			}, nil, true},
		{"orphans: endpoints not kept go, the table stays while networks do",
			func(d *Dataplane) error { return d.removeSpoofOrphans(map[string]bool{eid1: true}, false) }, []model.Endpoint{eps[0]}, true},
		{"orphans: no endpoint and no network left drops the table",
			func(d *Dataplane) error { return d.removeSpoofOrphans(nil, true) }, nil, false},
		{"empty-table sweep keeps a table with endpoints",
			func(d *Dataplane) error { return d.removeEmptySpoofTable() }, eps, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spoof := &fakeSpoofFilter{}
			d := fakeDataplane(&fakeFirewall{}, nil, spoof)
			for _, ep := range eps {
				if err := d.EnsureSpoofCheck(ep); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.do(d); err != nil {
				t.Fatal(err)
			}
			want := []string{}
			for _, ep := range tc.wantVeths {
				want = append(want, ep.HostVeth)
			}
			slices.Sort(want)
			if got := spoof.vethNames(); !slices.Equal(got, want) || spoof.table != tc.wantTable {
				t.Fatalf("under the filter: %q, table %v; want %q, table %v", got, spoof.table, want, tc.wantTable)
			}
		})
	}
}

// TestSpoofCheckRefusesBeforeFilter checks that an endpoint the filter
// cannot describe is refused before the filter is asked.
func TestSpoofCheckRefusesBeforeFilter(t *testing.T) {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	for name, modify := range map[string]func(*model.Endpoint){
		"no MAC":        func(e *model.Endpoint) { e.MAC = nil },
		"multicast MAC": func(e *model.Endpoint) { e.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} },
		"veth name":     func(e *model.Endpoint) { e.HostVeth = "bad+" },
		"no address":    func(e *model.Endpoint) { e.Addresses = []netip.Addr{{}} },
		"0.0.0.0":       func(e *model.Endpoint) { e.Addresses = []netip.Addr{netip.IPv4Unspecified()} },
		"short ID":      func(e *model.Endpoint) { e.ID = "abc" },
	} {
		spoof := &fakeSpoofFilter{}
		ep := spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2")
		modify(&ep)
		if err := fakeDataplane(&fakeFirewall{}, nil, spoof).EnsureSpoofCheck(ep); err == nil {
			t.Errorf("%s: EnsureSpoofCheck succeeded", name)
		}
		if len(spoof.ensured) > 0 {
			t.Errorf("%s: the filter was asked to ensure %q", name, spoof.ensured)
		}
	}
}
