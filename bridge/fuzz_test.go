package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
)

// FuzzDataplane drives the real dataplane, in a throwaway namespace that
// also holds links and rules that are not mynet's, with fuzzed names and
// options: a bridge name, an MTU, the network's switches and the name of a
// container end, and a sequence of creates and deletes. After every step,
// the links and rules mynet did not create must be exactly as they were,
// and those tagged as mynet's must be exactly what the steps that succeeded
// built: a failed step leaves nothing, whatever it was given.
func FuzzDataplane(f *testing.F) {
	nstest.RequireRoot(f)
	nstest.RequireCommand(f, "iptables")
	// ops: each byte is one step, see step.
	f.Add([]byte{0, 2, 3, 2, 1}, "", uint16(1450), uint8(0), "")
	f.Add([]byte{0, 2, 4, 6, 5, 3, 1}, "br-x", uint16(0), uint8(2), "eth1")
	f.Add([]byte{0, 2}, "br%d", uint16(1500), uint8(0), "")
	f.Add([]byte{0, 2}, "br0", uint16(1500), uint8(0), "")
	f.Add([]byte{0, 2, 0}, "", uint16(1500), uint8(0), "eth0")
	f.Add([]byte{0, 7, 2, 9}, "mn-bbbbbbbbbbbb", uint16(60), uint8(4), "eth%d")
	f.Add([]byte{7, 0, 9, 2, 11, 6, 12}, "a.b", uint16(9000), uint8(3), "mncbbbbbbbbbbbb")
	f.Fuzz(func(t *testing.T, ops []byte, bridgeName string, mtu uint16, flags uint8, peerName string) {
		if len(ops) > 8 {
			ops = ops[:8] // each step costs dozens of iptables runs
		}
		withDataplane(t, "", func(d *Dataplane) {
			m := newModel(t, d, bridgeName, int(mtu), flags, peerName)
			for i, op := range ops {
				what := m.step(op)
				if err := m.check(); err != nil {
					t.Fatalf("after step %d (%s): %v", i, what, err)
				}
			}
			m.clear()
			if err := m.check(); err != nil {
				t.Fatalf("after deleting everything: %v", err)
			}
		})
	})
}

// expected is what the dataplane must hold: the networks and endpoints whose
// last create succeeded and that were not deleted since.
type expected struct {
	t        *testing.T
	d        *Dataplane
	networks [2]model.Network
	eps      [2]model.Endpoint
	nets     map[string]model.Network
	live     map[string]model.Endpoint
	foreign  string // links and rules that are not mynet's
}

func newModel(t *testing.T, d *Dataplane, bridgeName string, mtu int, flags uint8, peerName string) *expected {
	m := &expected{t: t, d: d, nets: map[string]model.Network{}, live: map[string]model.Endpoint{}}
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	if bridgeName != "" {
		n.Bridge = bridgeName
	}
	n.MTU, n.ICC, n.Masquerade, n.Internal = mtu, flags&1 == 0, flags&2 == 0, flags&4 != 0
	m.networks[0] = n
	m.networks[1] = testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
	m.eps[0] = testEndpoint(n, eid1)
	m.eps[0].AntiSpoofing = flags&8 != 0
	m.eps[0].Addresses = []netip.Addr{netip.MustParseAddr("10.1.0.2")}
	if peerName != "" {
		m.eps[0].ContainerVeth = peerName
	}
	m.eps[1] = testEndpoint(m.networks[1], "dddddddddddd4444444444444444444444444444444444444444444444444444")
	m.eps[1].MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	// What a host has besides mynet: an uplink, a bridge with a port, and
	// rules of their own, Docker's DOCKER-USER among them.
	for _, c := range [][]string{
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "uplink0"},
		{"ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "link", "add", "vethf0", "master", "br0", "type", "veth", "peer", "name", "vethf1"},
		{"iptables", "-N", "DOCKER-USER"},
		{"iptables", "-A", "DOCKER-USER", "-j", "RETURN"},
		{"iptables", "-A", "FORWARD", "-j", "DOCKER-USER"},
		{"iptables", "-A", "FORWARD", "-i", "br0", "-o", "br0", "-j", "ACCEPT"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.18.1.0/24", "-o", "eth0", "-j", "MASQUERADE"},
	} {
		run(t, c...)
	}
	m.foreign = m.notMine()
	return m
}

// step runs one operation on network or endpoint op/13%2 and records it in
// the model if it succeeded. Errors are expected (the inputs are fuzzed);
// what a failed step left behind is check's business.
func (m *expected) step(op byte) string {
	ctx := context.Background()
	i := int(op/13) % 2
	n, ep := m.networks[i], m.eps[i]
	if cur, ok := m.live[ep.ID]; ok {
		ep = cur // with its ports
	}
	var err error
	var what string
	switch op % 13 {
	case 0, 7:
		what = "EnsureNetwork " + n.Bridge
		if err = m.d.EnsureNetwork(ctx, n); err == nil {
			m.nets[n.ID] = n
		}
	case 1, 8:
		what = "DeleteNetwork " + n.Bridge
		if _, ok := m.live[ep.ID]; ok {
			// The engine deletes a network's endpoints first.
			m.deleteEndpoint(ep)
		}
		if err = m.d.DeleteNetwork(ctx, n); err == nil {
			delete(m.nets, n.ID)
		}
	case 2, 9:
		what = "EnsureEndpoint " + ep.HostVeth + "/" + ep.ContainerVeth
		m.ensureEndpoint(ep)
	case 3, 10:
		what = "DeleteEndpoint " + ep.HostVeth
		m.deleteEndpoint(ep)
	case 4, 11:
		what = "DeleteEndpoint and EnsureEndpoint " + ep.HostVeth + " before the janitor runs"
		if err = m.d.DeleteEndpoint(ctx, ep); err != nil {
			m.t.Fatalf("%s: %v", what, err)
		}
		delete(m.live, ep.ID)
		ep.Ports = nil
		m.ensureEndpoint(ep)
	case 5, 12:
		what = "RemoveOrphans"
		keepN, keepE := map[string]bool{}, map[string]bool{}
		for id := range m.nets {
			keepN[id] = true
		}
		for id := range m.live {
			keepE[id] = true
		}
		if err = m.d.RemoveOrphans(ctx, keepN, keepE); err != nil {
			m.t.Fatalf("%s: %v", what, err)
		}
	case 6:
		what = "EnsurePorts"
		ports := []model.PortMapping{{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: netip.MustParseAddr("10.1.0.2"), Port: 80}}
		if _, ok := m.live[ep.ID]; ok {
			if err = m.d.EnsurePorts(ctx, n, ep, ports); err == nil {
				ep.Ports = ports
				m.live[ep.ID] = ep
			}
		}
	}
	m.d.Sync() // deleted veths go after the answer
	return what
}

func (m *expected) ensureEndpoint(ep model.Endpoint) {
	if err := m.d.EnsureEndpoint(context.Background(), ep); err == nil {
		m.live[ep.ID] = ep
	}
}

func (m *expected) deleteEndpoint(ep model.Endpoint) {
	if err := m.d.DeleteEndpoint(context.Background(), ep); err != nil {
		m.t.Fatalf("DeleteEndpoint %s: %v", ep.HostVeth, err)
	}
	delete(m.live, ep.ID)
	m.d.Sync()
}

// clear deletes everything the model holds, as the engine would.
func (m *expected) clear() {
	for _, ep := range m.live {
		m.deleteEndpoint(ep)
	}
	for _, n := range m.nets {
		if err := m.d.DeleteNetwork(context.Background(), n); err != nil {
			m.t.Fatalf("DeleteNetwork %s: %v", n.Bridge, err)
		}
		delete(m.nets, n.ID)
	}
}

// check compares the namespace with the model.
func (m *expected) check() error {
	var errs []error
	if got := m.notMine(); got != m.foreign {
		errs = append(errs, fmt.Errorf("links or rules that are not mynet's changed:\n--- before\n%s--- after\n%s", m.foreign, got))
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	seen := map[string]bool{}
	for _, l := range links {
		a := l.Attrs()
		kind, id, ok := m.d.parseTag(a.Alias)
		if !ok {
			continue
		}
		seen[kind+id] = true
		switch n, ep := m.nets[id], m.live[id]; {
		case kind == "net" && n.ID == "":
			errs = append(errs, fmt.Errorf("bridge %s is tagged for network %s, which does not exist", a.Name, id))
		case kind == "net" && (a.Name != n.Bridge || l.Type() != "bridge"):
			errs = append(errs, fmt.Errorf("network %s has the %s %s, want the bridge %s", id, l.Type(), a.Name, n.Bridge))
		case kind == "ep" && ep.ID == "":
			errs = append(errs, fmt.Errorf("veth %s is tagged for endpoint %s, which does not exist", a.Name, id))
		case kind == "ep":
			peer, br := byIndex[a.ParentIndex], byIndex[a.MasterIndex]
			switch {
			case m.nets[ep.NetworkID].ID == "":
				errs = append(errs, fmt.Errorf("endpoint %s exists without its network %s", id, ep.NetworkID))
			case a.Name != ep.HostVeth || l.Type() != "veth":
				errs = append(errs, fmt.Errorf("endpoint %s has the %s %s, want the veth %s", id, l.Type(), a.Name, ep.HostVeth))
			case peer == nil || peer.Attrs().Name != ep.ContainerVeth:
				errs = append(errs, fmt.Errorf("veth %s: its peer is not %s", a.Name, ep.ContainerVeth))
			case br == nil || br.Attrs().Name != ep.Bridge:
				errs = append(errs, fmt.Errorf("veth %s is not on the bridge %s", a.Name, ep.Bridge))
			}
		}
	}
	for id, n := range m.nets {
		if !seen["net"+id] {
			errs = append(errs, fmt.Errorf("network %s has no bridge %s", id, n.Bridge))
		}
	}
	for id, ep := range m.live {
		if !seen["ep"+id] {
			errs = append(errs, fmt.Errorf("endpoint %s has no veth %s", id, ep.HostVeth))
		}
	}
	rulesOf := map[string]bool{}
	for _, l := range strings.Split(save(m.t, "iptables-save")+save(m.t, "ip6tables-save"), "\n") {
		nid, eid, ok := model.ParseRuleComment(l)
		if !ok {
			continue
		}
		rulesOf[nid] = true
		if _, ok := m.nets[nid]; !ok {
			errs = append(errs, fmt.Errorf("a rule of network %s, which does not exist: %s", nid, l))
		}
		if ep, ok := m.live[eid]; eid != "" && (!ok || len(ep.Ports) == 0) {
			errs = append(errs, fmt.Errorf("a port rule of endpoint %s, which has none: %s", eid, l))
		}
	}
	for id := range m.nets {
		if !rulesOf[id] {
			errs = append(errs, fmt.Errorf("network %s has no rules", id))
		}
	}
	return errors.Join(errs...)
}

// notMine lists the links and rules that are not mynet's: untagged links
// other than the container ends of the model's endpoints, with their
// configuration and addresses, and the rules that neither jump to nor sit
// in mynet's chains nor carry its comment.
func (m *expected) notMine() string {
	links, err := netlink.LinkList()
	if err != nil {
		m.t.Fatal(err)
	}
	peers := map[string]bool{}
	for _, ep := range m.live {
		peers[ep.ContainerVeth] = true
	}
	var b strings.Builder
	for _, l := range links {
		a := l.Attrs()
		if _, _, ok := m.d.parseTag(a.Alias); ok || (peers[a.Name] && l.Type() == "veth") {
			continue
		}
		fmt.Fprintf(&b, "link %d %s type=%s mtu=%d master=%d alias=%q mac=%s up=%v\n", a.Index, a.Name, l.Type(), a.MTU, a.MasterIndex, a.Alias, a.HardwareAddr, a.Flags&net.FlagUp != 0)
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			m.t.Fatal(err)
		}
		for _, ad := range addrs {
			if !ad.IP.IsLinkLocalUnicast() {
				fmt.Fprintf(&b, "  addr %s\n", ad.IPNet)
			}
		}
	}
	prefix := strings.TrimSuffix(m.d.fw4.(*iptablesFirewall).chains.Forward, "FORWARD")
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		for _, l := range strings.Split(save(m.t, cmd), "\n") {
			if !strings.Contains(l, prefix) && !strings.Contains(l, `--comment "mynet `) && !strings.Contains(l, "--comment mynet") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// save is the ruleset without comments and counters.
func save(t *testing.T, cmd string) string {
	out, err := exec.Command(cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			keep = append(keep, counters.ReplaceAllString(l, ""))
		}
	}
	return strings.Join(keep, "\n") + "\n"
}
