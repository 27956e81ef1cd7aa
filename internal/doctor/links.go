package doctor

// The links: the state's bridges and veths against the kernel's, and the
// links tagged by the instance that the state does not know.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// linkTag is the alias the daemon gives its links (see model.Tag); a
// daemon that reports no generation writes the earlier release's tags.
func linkTag(instance string, st *plugin.Dump, kind, id string) string {
	return model.Tag{Instance: instance, Generation: st.Generation, Kind: kind, ID: id}.String()
}

// stable returns the records of the second read that the first read has
// too, leaving out those pending in either, sorted by ID; key gives a
// record's ID and whether it is pending.
func stable[T any](first, second []T, key func(T) (string, bool)) []T {
	in := map[string]bool{}
	for _, r := range first {
		if id, pending := key(r); !pending {
			in[id] = true
		}
	}
	var out []T
	for _, r := range second {
		if id, pending := key(r); in[id] && !pending {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(x, y T) int {
		ix, _ := key(x)
		iy, _ := key(y)
		return strings.Compare(ix, iy)
	})
	return out
}

func stableNetworks(a, b *plugin.Dump) []state.Network {
	return stable(a.Networks, b.Networks, func(n state.Network) (string, bool) { return n.ID, n.Pending })
}

func stableEndpoints(a, b *plugin.Dump) []state.Endpoint {
	return stable(a.Endpoints, b.Endpoints, func(e state.Endpoint) (string, bool) { return e.ID, e.Pending })
}

func (d *doctor) networkName(id string) string {
	s := model.Short(id)
	if n, ok := d.docker[id]; ok && n.Name != "" {
		s += " (" + n.Name + ")"
	}
	return s
}

// checkMissingLinks reports state records whose bridge or veth is missing
// or not mynet's.
func (d *doctor) checkMissingLinks(st1, st2 *plugin.Dump, sc1, sc2 scan) {
	nets := stableNetworks(st1, st2)
	bridges := map[string]linkInfo{}
	for _, n := range nets {
		l1, ok1 := sc1.links[n.Bridge]
		l2, ok2 := sc2.links[n.Bridge]
		tag := linkTag(d.t.Instance, st2, model.KindNetwork, n.ID)
		switch {
		case !ok1 && !ok2:
			d.add("missing_bridge", statusProblem, fmt.Sprintf("bridge %s of network %s is missing: its containers are cut off", n.Bridge, d.networkName(n.ID)), d.reconcileFix(rebuilds))
		case ok1 && ok2 && l1.alias != tag && l2.alias != tag:
			d.add("missing_bridge", statusProblem, fmt.Sprintf("interface %s, the bridge of network %s, is not mynet's (type %s, alias %q)", n.Bridge, d.networkName(n.ID), l2.kind, l2.alias),
				fmt.Sprintf("ip link del %s   # if nothing else needs it; then: %s", n.Bridge, d.reconcileFix(rebuilds)))
		case ok2:
			bridges[n.ID] = l2
		}
	}
	known := map[string]bool{}
	for _, n := range nets {
		known[n.ID] = true
	}
	for _, e := range stableEndpoints(st1, st2) {
		if !known[e.NetworkID] {
			continue
		}
		l1, ok1 := sc1.links[e.HostVeth]
		l2, ok2 := sc2.links[e.HostVeth]
		tag := linkTag(d.t.Instance, st2, model.KindEndpoint, e.ID)
		what := fmt.Sprintf("endpoint %s (%s) of network %s", model.Short(e.ID), d.endpointName(e), d.networkName(e.NetworkID))
		switch {
		case !ok1 && !ok2:
			d.add("missing_veth", statusProblem, fmt.Sprintf("host veth %s of %s is missing: its container has no network", e.HostVeth, what),
				d.reconcileFix(dropsEp)+"\n"+d.reconnectFix(e))
		case ok1 && ok2 && l1.alias != tag && l2.alias != tag:
			d.add("missing_veth", statusProblem, fmt.Sprintf("interface %s, the host veth of %s, is not mynet's (alias %q)", e.HostVeth, what, l2.alias),
				d.reconcileFix(dropsEp)+"\n"+d.reconnectFix(e))
		case ok1 && ok2:
			if br, ok := bridges[e.NetworkID]; ok && l1.master != br.index && l2.master != br.index {
				d.add("missing_veth", statusProblem, fmt.Sprintf("host veth %s of %s is not on bridge %s", e.HostVeth, what, br.name),
					fmt.Sprintf("ip link set %s master %s", e.HostVeth, br.name))
			}
		}
	}
}

func (d *doctor) endpointName(e state.Endpoint) string {
	parts := []string{}
	if c := d.docker[e.NetworkID].ContainerOf(e.ID); c != "" {
		parts = append(parts, "container "+c)
	}
	for _, a := range []string{e.IPv4, e.IPv6} {
		if a != "" {
			parts = append(parts, a)
		}
	}
	if len(parts) == 0 {
		return "no address"
	}
	return strings.Join(parts, ", ")
}

func (d *doctor) reconnectFix(e state.Endpoint) string {
	nw, ctr := model.Short(e.NetworkID), "CONTAINER"
	if n, ok := d.docker[e.NetworkID]; ok {
		if n.Name != "" {
			nw = n.Name
		}
		if c := n.ContainerOf(e.ID); c != "" {
			ctr = c
		}
	}
	return fmt.Sprintf("docker network disconnect -f %s %s && docker network connect %s %s   # if the container still runs", nw, ctr, nw, ctr)
}

// checkOrphanLinks reports links tagged with the instance whose network or
// endpoint the state does not know.
func (d *doctor) checkOrphanLinks(st *plugin.Dump, sc1, sc2 scan) {
	nets, eps := map[string]bool{}, map[string]bool{}
	for _, n := range st.Networks {
		nets[n.ID] = true
	}
	for _, e := range st.Endpoints {
		eps[e.ID] = true
	}
	var names []string
	for name := range sc2.links {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l := sc2.links[name]
		if l1, ok := sc1.links[name]; !ok || l1.alias != l.alias {
			continue
		}
		tag, ok := model.ParseTag(l.alias)
		if !ok || tag.Instance != d.t.Instance {
			continue
		}
		if tag.Generation != st.Generation {
			d.addForeignLink(name, tag, st.Generation)
			continue
		}
		switch {
		case tag.Kind == model.KindNetwork && !nets[tag.ID]:
			d.add("orphan_link", statusProblem, fmt.Sprintf("bridge %s is tagged with network %s, which the state does not know", name, model.Short(tag.ID)), "ip link del "+name)
		case tag.Kind == model.KindEndpoint && !eps[tag.ID]:
			d.add("orphan_link", statusProblem, fmt.Sprintf("veth %s is tagged with endpoint %s, which the state does not know", name, model.Short(tag.ID)), "ip link del "+name)
		}
	}
}
