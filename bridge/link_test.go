package bridge

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestTemplateNameLeavesNoLink: the kernel expands "%d" in the name of a new
// link, so a bridge asked for as "br%d" would be made as br0, a link nobody
// looks for. The dataplane refuses such names itself (the plugin does too,
// with a 400), so a caller that skips the plugin's checks leaves nothing.
func TestTemplateNameLeavesNoLink(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.Bridge = "br%d"
		before := snapshot(t)
		for range 2 { // each try used to leave one more
			err := d.EnsureNetwork(ctx, n)
			if after := snapshot(t); after != before {
				t.Fatalf("a refused network changed the namespace:\n--- before\n%s--- after\n%s", before, after)
			}
			if err == nil || !strings.Contains(err.Error(), "'%'") {
				t.Fatalf("EnsureNetwork with bridge %q = %v, want a refusal naming '%%'", n.Bridge, err)
			}
		}
		n = testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		ep := testEndpoint(n, eid1)
		ep.ContainerVeth = "eth%d"
		before = snapshot(t)
		err := d.EnsureEndpoint(ctx, ep)
		if after := snapshot(t); after != before {
			t.Fatalf("a refused endpoint changed the namespace:\n--- before\n%s--- after\n%s", before, after)
		}
		if err == nil || !strings.Contains(err.Error(), "'%'") {
			t.Fatalf("EnsureEndpoint with peer %q = %v, want a refusal naming '%%'", ep.ContainerVeth, err)
		}
	})
}

// TestAddLinkByIndex: a created link is found by the index the kernel
// reports, not by the name asked for. One the kernel named otherwise is
// deleted again, never left behind untagged; one named as asked is tagged.
func TestAddLinkByIndex(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		tag := d.tag("net", nid1)
		before := snapshot(t)
		// Below the name checks of ensureBridge, as a kernel rename would be.
		_, err := d.addLink(newLink{kind: "bridge", name: "tst%d"}, tag)
		if err == nil || !strings.Contains(err.Error(), "named the new link tst0") {
			t.Fatalf("addLink(tst%%d) = %v, want an error naming tst0", err)
		}
		if after := snapshot(t); after != before {
			t.Fatalf("a link named otherwise was left behind:\n--- before\n%s--- after\n%s", before, after)
		}

		l, err := d.addLink(newLink{kind: "bridge", name: "tst0", mtu: 1400, up: true}, tag)
		if err != nil {
			t.Fatal(err)
		}
		got, err := netlink.LinkByName("tst0")
		if err != nil {
			t.Fatal(err)
		}
		a := got.Attrs()
		if a.Index != l.Attrs().Index || a.Alias != tag || got.Type() != "bridge" || a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
			t.Fatalf("tst0: index %d (returned %d), alias %q, type %s, mtu %d, flags %v", a.Index, l.Attrs().Index, a.Alias, got.Type(), a.MTU, a.Flags)
		}

		veth := newLink{kind: "veth", name: "tstv0", master: a.Index, up: true, oneQueue: true,
			peer: &newLink{name: "tstc0", mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 9}, oneQueue: true}}
		v, err := d.addLink(veth, d.tag("ep", eid1))
		if err != nil {
			t.Fatal(err)
		}
		if v.Attrs().Name != "tstv0" || v.Attrs().MasterIndex != a.Index || v.Attrs().Alias != d.tag("ep", eid1) {
			t.Fatalf("veth: name %s master %d alias %q", v.Attrs().Name, v.Attrs().MasterIndex, v.Attrs().Alias)
		}
		peer, err := netlink.LinkByName("tstc0")
		if err != nil {
			t.Fatal(err)
		}
		if peer.Attrs().HardwareAddr.String() != "02:00:00:00:00:09" || peer.Attrs().NumTxQueues != 1 || peer.Attrs().Alias != "" {
			t.Fatalf("peer: mac %s, %d tx queues, alias %q", peer.Attrs().HardwareAddr, peer.Attrs().NumTxQueues, peer.Attrs().Alias)
		}
		run(t, "ip", "link", "del", "tstv0")
		run(t, "ip", "link", "del", "tst0")
	})
}

// TestEndpointIDReuse: an endpoint deleted and created again with the same
// ID before the janitor ran gets a veth of its own. The old one, queued for
// deletion under the same name and tag, is never adopted, and the janitor
// deletes only the old one.
func TestEndpointIDReuse(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		ep := testEndpoint(n, eid1)
		if err := d.EnsureEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		old, err := netlink.LinkByName(ep.HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		// Hold the janitor, so that the old veth is still queued when the
		// endpoint comes back, as it is on a busy host.
		release := make(chan struct{})
		d.later(func(*netlink.Handle) { <-release })
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			close(release)
			t.Fatal(err)
		}
		err = d.EnsureEndpoint(ctx, ep)
		close(release)
		if err != nil {
			t.Fatal(err)
		}
		d.Sync()
		host, err := netlink.LinkByName(ep.HostVeth)
		if err != nil {
			t.Fatalf("the endpoint's veth is gone after the janitor ran: %v", err)
		}
		br, err := netlink.LinkByName(n.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		a := host.Attrs()
		if a.Index == old.Attrs().Index || a.Alias != d.tag("ep", ep.ID) || a.MasterIndex != br.Attrs().Index || a.Flags&net.FlagUp == 0 {
			t.Fatalf("veth %s: index %d (old %d), alias %q, master %d (bridge %d), flags %v", ep.HostVeth, a.Index, old.Attrs().Index, a.Alias, a.MasterIndex, br.Attrs().Index, a.Flags)
		}
		if _, err := netlink.LinkByName(ep.ContainerVeth); err != nil {
			t.Fatalf("the container end Join names is gone: %v", err)
		}
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		d.Sync()
		if _, err := netlink.LinkByName(ep.HostVeth); err == nil {
			t.Fatal("veth survived the second DeleteEndpoint")
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}
