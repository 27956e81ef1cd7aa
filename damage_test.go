package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mynet/mynet/bridge"
)

// TestExternalDamage flushes mynet's chains, deletes its hook and its
// bridge behind the daemon's back, as a firewall reload or an operator
// would, and checks that the daemon restores exactly its own objects: by
// itself within seconds, or at once on SIGHUP; and that the rules of a
// network deleted meanwhile never come back. (With a 1 s interval, damage
// that lands while a pass runs is caught by the recheck every 10 ticks.)
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
			good := ns.snapshot(t)
			if strings.Contains(good, gone) || !strings.Contains(good, keep) {
				t.Fatalf("unexpected starting point:\n%s", good)
			}
			filter, nat := bridge.InstanceChains(d.name)
			ns.run(t, "iptables", "-F", filter[1]) // the isolation drops
			ns.run(t, "iptables", "-t", "nat", "-F", nat[0])
			ns.run(t, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "mynet "+d.name, "-j", filter[0])
			ns.run(t, "ip", "link", "del", bridge.BridgeName(keep))
			if ns.snapshot(t) == good {
				t.Fatal("the damage changed nothing: the test would prove nothing")
			}
			tc.poke(t, d)
			var got string
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				if got = ns.snapshot(t); got == good {
					break
				}
			}
			if got != good {
				t.Fatalf("not restored within 15 s:\n--- want\n%s\n--- got\n%s", good, got)
			}
			if strings.Contains(got, gone) {
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
