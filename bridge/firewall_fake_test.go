package bridge

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// fakeFirewall keeps one family's rules as a list of names ("net:ID",
// "ports:ID"), so that the Dataplane's side of the firewall seam (which
// families it calls, what it undoes) is tested without iptables.
type fakeFirewall struct {
	name  string
	rules []string
	fail  error // returned by every call that changes or reads rules
}

func (f *fakeFirewall) family() string { return f.name }

func (f *fakeFirewall) add(rule string, undo *netutil.Undo) error {
	if f.fail != nil {
		return f.fail
	}
	if slices.Contains(f.rules, rule) {
		return nil // there before this call: not this call's to undo
	}
	f.rules = append(f.rules, rule)
	undo.Push(f.name+" "+rule, func() error { return f.del(rule) })
	return nil
}

func (f *fakeFirewall) del(rule string) error {
	f.rules = slices.DeleteFunc(f.rules, func(r string) bool { return r == rule })
	return nil
}

func (f *fakeFirewall) ensureNetwork(_ context.Context, n model.Network, undo *netutil.Undo) error {
	return f.add("net:"+n.ID, undo)
}

func (f *fakeFirewall) removeNetwork(id string) error { return f.del("net:" + id) }

func (f *fakeFirewall) ensurePorts(_ context.Context, _ model.Network, ep model.Endpoint, _ []model.PortMapping, undo *netutil.Undo) error {
	return f.add("ports:"+ep.ID, undo)
}

func (f *fakeFirewall) removePorts(ep model.Endpoint, _ []model.PortMapping) error {
	if f.fail != nil {
		return f.fail
	}
	return f.del("ports:" + ep.ID)
}

func (f *fakeFirewall) ensureAll(_ context.Context, networks []model.Network, endpoints []model.Endpoint, undo *netutil.Undo) (int, error) {
	before := len(f.rules)
	for _, n := range networks {
		if err := f.add("net:"+n.ID, undo); err != nil {
			return 0, err
		}
	}
	for _, ep := range endpoints {
		if err := f.add("ports:"+ep.ID, undo); err != nil {
			return 0, err
		}
	}
	return len(f.rules) - before, nil
}

func (f *fakeFirewall) removeOrphans(networks, endpoints map[string]bool) error { return nil }

func (f *fakeFirewall) hasRules() (bool, error) { return len(f.rules) > 0, f.fail }

func (f *fakeFirewall) ownLines() ([]string, error) { return f.rules, f.fail }

// fakeDataplane is a Dataplane with fakes behind both seams and no kernel
// handle: only what goes through the seams may be called on it.
func fakeDataplane(fw4, fw6 *fakeFirewall, spoof *fakeSpoofFilter) *Dataplane {
	d := &Dataplane{instance: "mynet-test", log: slog.New(slog.DiscardHandler), fw4: fw4, spoof: spoof}
	if fw6 != nil {
		d.fw6 = fw6
	}
	return d
}

// TestEnsurePortsUndo checks that a failed EnsurePorts removes the rules
// this call added in every family, and keeps those that were there before.
func TestEnsurePortsUndo(t *testing.T) {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	ep := testEndpoint(n, eid1)
	ports := []model.PortMapping{{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, Port: 80, ContainerIP: netip.MustParseAddr("10.1.0.2")}}
	errFake := errors.New("fake firewall failure")
	for _, tc := range []struct {
		name           string
		before4        []string // fw4's rules before the call
		fail6          error
		failpoint      string
		internal       bool
		wantErr        bool
		want4, want6   []string
		wantFW6Touched bool
	}{
		{name: "both families", want4: []string{"ports:" + eid1}, want6: []string{"ports:" + eid1}},
		{name: "ip6tables fails: ip4 rules of this call undone", fail6: errFake, wantErr: true},
		{name: "ip6tables fails: ip4 rules from before kept", before4: []string{"ports:" + eid1}, fail6: errFake, wantErr: true,
			want4: []string{"ports:" + eid1}},
		{name: "failure after both: both undone", failpoint: "bridge.ports=error", wantErr: true},
		{name: "internal network refuses ports", internal: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := failpoint.Enable(tc.failpoint); err != nil {
				t.Fatal(err)
			}
			defer failpoint.Enable("")
			fw4 := &fakeFirewall{name: "iptables", rules: slices.Clone(tc.before4)}
			fw6 := &fakeFirewall{name: "ip6tables", fail: tc.fail6}
			d := fakeDataplane(fw4, fw6, &fakeSpoofFilter{})
			n := n
			n.Internal = tc.internal
			err := d.EnsurePorts(context.Background(), n, ep, ports)
			if (err != nil) != tc.wantErr {
				t.Fatalf("EnsurePorts: err = %v, want error: %v", err, tc.wantErr)
			}
			if tc.fail6 != nil && !errors.Is(err, tc.fail6) {
				t.Errorf("EnsurePorts: err = %v, does not wrap the firewall's", err)
			}
			if !slices.Equal(fw4.rules, tc.want4) || !slices.Equal(fw6.rules, tc.want6) {
				t.Errorf("rules after EnsurePorts: iptables %q, ip6tables %q; want %q, %q", fw4.rules, fw6.rules, tc.want4, tc.want6)
			}
		})
	}
}

// TestHasRules checks that HasRules asks every family and the
// anti-spoofing filter, and stops at the first that has rules or fails.
func TestHasRules(t *testing.T) {
	errFake := errors.New("fake firewall failure")
	for _, tc := range []struct {
		name       string
		fw4, fw6   *fakeFirewall
		spoofVeths []string
		want       bool
		wantErr    error
	}{
		{name: "nothing", fw4: &fakeFirewall{}, fw6: &fakeFirewall{}},
		{name: "without ip6tables", fw4: &fakeFirewall{}},
		{name: "iptables", fw4: &fakeFirewall{rules: []string{"net:" + nid1}}, fw6: &fakeFirewall{}, want: true},
		{name: "ip6tables", fw4: &fakeFirewall{}, fw6: &fakeFirewall{rules: []string{"net:" + nid1}}, want: true},
		{name: "anti-spoofing elements", fw4: &fakeFirewall{}, fw6: &fakeFirewall{}, spoofVeths: []string{"mnvcccccccccccc"}, want: true},
		{name: "iptables fails", fw4: &fakeFirewall{fail: errFake}, fw6: &fakeFirewall{}, wantErr: errFake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spoof := &fakeSpoofFilter{}
			for _, v := range tc.spoofVeths {
				spoof.put(model.Endpoint{HostVeth: v})
			}
			got, err := fakeDataplane(tc.fw4, tc.fw6, spoof).HasRules()
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Fatalf("HasRules = %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
