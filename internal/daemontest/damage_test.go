package daemontest

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// TestExternalDamage flushes mynet's chains, deletes its hook and its
// bridge behind the daemon's back, as a firewall reload or an operator
// would, and checks that the daemon restores exactly its own objects: by
// itself within seconds, or at once on SIGHUP, the containers' veths on the
// new bridge and up included; and that the rules of a network deleted
// meanwhile never come back.
func TestExternalDamage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval string
		poke     func(t *testing.T, d *daemon)
	}{
		{"periodic", "1s", func(*testing.T, *daemon) {}},
		{"sighup", "0", func(t *testing.T, d *daemon) { syscall.Kill(daemonPID(t, d), syscall.SIGHUP) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t)
			d := startDaemon(t, ns)
			d.stop()
			d.reconcileInterval = tc.interval
			d.start("")
			keep, gone := randHex(32), randHex(32)
			for i, nid := range []string{keep, gone} {
				d.mustCall("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid, "Options": map[string]any{},
					"IPv4Data": []map[string]any{{"Pool": fmt.Sprintf("10.66.%d.0/24", i), "Gateway": fmt.Sprintf("10.66.%d.1/24", i)}}})
			}
			d.mustCall("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": gone})
			var veths []string
			addEndpoint := func() {
				eid := randHex(32)
				d.mustCall("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": keep, "EndpointID": eid,
					"Interface": map[string]any{"Address": fmt.Sprintf("10.66.0.%d/24", len(veths)+2)}})
				host, _ := model.VethNames(eid)
				veths = append(veths, host)
			}
			// The damage lands in the interval in which the daemon made
			// all this: its own changes must not hide it.
			for range 4 {
				addEndpoint()
			}
			// The bridge comes back with a new index, listed after the veths.
			snapshot := func() string { return sortLinks(ns.snapshot(t)) }
			good := snapshot()
			if strings.Contains(good, gone) || !strings.Contains(good, keep) {
				t.Fatalf("unexpected starting point:\n%s", good)
			}
			filter, nat := model.ChainsFor(d.name).ByTable()
			ns.run(t, "iptables", "-F", filter[1]) // the isolation drops
			ns.run(t, "iptables", "-t", "nat", "-F", nat[0])
			ns.run(t, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "mynet "+d.name, "-j", filter[0])
			// Deleting the bridge releases its ports: every veth is left
			// with no master, and the containers are cut off.
			ns.run(t, "ip", "link", "del", model.BridgeName(keep))
			if snapshot() == good {
				t.Fatal("the damage changed nothing: the test would prove nothing")
			}
			tc.poke(t, d)
			restored := func(what string) {
				t.Helper()
				var got, detached string
				// Two intervals and a margin, well before the recheck at
				// the tenth: the periodic pass itself must repair.
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
					if got, detached = snapshot(), ns.detachedPorts(t, model.BridgeName(keep), veths); got == good && detached == "" {
						break
					}
				}
				if got != good {
					t.Fatalf("%s not restored within 5 s:\n--- want\n%s\n--- got\n%s", what, good, got)
				}
				if detached != "" {
					t.Fatalf("%s not restored within 5 s: %s", what, detached)
				}
			}
			restored("bridge and rules")
			// A veth taken off its bridge or set down, with the bridge
			// itself intact.
			ns.run(t, "ip", "link", "set", veths[1], "nomaster")
			ns.run(t, "ip", "link", "set", veths[2], "down")
			tc.poke(t, d)
			restored("veths")
			if strings.Contains(snapshot(), gone) {
				t.Fatal("rules of the deleted network came back")
			}
		})
	}
}

// TestNoFalseRepairsUnderChurn: containers coming and going while the
// reconcile runs often must never look like damage from outside. A veth is
// deleted a moment after DeleteEndpoint answers; a pass that took it into
// its fingerprint in between made the next pass "repair" and warn.
func TestNoFalseRepairsUnderChurn(t *testing.T) {
	ns := newNS(t)
	d := startDaemon(t, ns)
	d.stop()
	d.reconcileInterval = "20ms"
	d.start("")
	nid := randHex(32)
	d.mustCall("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid, "Options": map[string]any{},
		"IPv4Data": []map[string]any{{"Pool": "10.67.0.0/24", "Gateway": "10.67.0.1/24"}}})
	for i := range 60 {
		eid := randHex(32)
		d.mustCall("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid,
			"Interface": map[string]any{"Address": fmt.Sprintf("10.67.0.%d/24", i%200+2)}})
		time.Sleep(7 * time.Millisecond) // let passes land at every point of the cycle
		d.mustCall("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
		time.Sleep(3 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // ten more passes
	d.mustCall("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
	d.stop() // the log is complete, and no longer written, once it has exited
	if strings.Contains(d.log.String(), "changed from outside") {
		t.Fatalf("the reconcile took mynet's own changes for outside damage; log:\n%s", d.log)
	}
}

// detachedPorts names the veths that are not up on bridge, or "" when all
// are.
func (ns *testNS) detachedPorts(t *testing.T, bridge string, veths []string) string {
	t.Helper()
	var bad []string
	for _, v := range veths {
		// e.g. "7: mnv0123456789ab@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master mn-x state ..."
		l := ns.run(t, "ip", "-o", "link", "show", "dev", v)
		flags, _, _ := strings.Cut(strings.SplitN(l, "<", 2)[1], ">")
		if !strings.Contains(l, " master "+bridge+" ") || !slices.Contains(strings.Split(flags, ","), "UP") {
			bad = append(bad, strings.TrimSpace(l))
		}
	}
	return strings.Join(bad, "; ")
}

// sortLinks sorts the names on the links line of a testNS snapshot.
func sortLinks(snapshot string) string {
	links, rest, _ := strings.Cut(snapshot, "\n")
	names := strings.Fields(strings.TrimPrefix(links, "links:"))
	slices.Sort(names)
	return "links: " + strings.Join(names, " ") + "\n" + rest
}
