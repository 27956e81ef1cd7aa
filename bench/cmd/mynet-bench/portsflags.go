package main

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// portsConfig is phase 9's part of the configuration.
type portsConfig struct {
	pubPorts, pubHost, pubCtr, pubTrials, pubRuns int
	mapCounts                                     []int
	mapCap, passWindow                            time.Duration
	startNets, startEps, startPorts               int
	portsFirewalls                                []string
}

// portsLists are phase 9's flags parsed after the flag set is done.
type portsLists struct{ pubBase, mapCounts, firewalls string }

func (c *config) definePorts(fs *flag.FlagSet, l *portsLists) {
	fs.IntVar(&c.pubPorts, "pub-ports", 1000, "phase 9: ports one container publishes with docker run -p (a range, not identity-mapped); 0: no docker part")
	fs.StringVar(&l.pubBase, "pub-base", "21000:31000", "phase 9: first host port and first container port of docker run -p's range")
	fs.IntVar(&c.pubTrials, "pub-trials", 1, "phase 9: docker run -p + docker rm -f trials per driver")
	fs.IntVar(&c.pubRuns, "pub-runs", 5, "phase 9: docker run --rm on a second mynet network, alone and at least as many during port work")
	fs.StringVar(&l.mapCounts, "map-counts", "1000,3000,10000", "phase 9: mappings published on one endpoint through the socket, ascending")
	fs.DurationVar(&c.mapCap, "map-cap", 45*time.Second, "phase 9: skip a mapping count whose publish + unpublish, estimated linearly from the count before, would take longer (the plugin's request deadline by default)")
	fs.IntVar(&c.startNets, "startup-networks", 100, "phase 9: networks in the state mynet restarts on")
	fs.IntVar(&c.startEps, "startup-endpoints", 1000, "phase 9: endpoints in that state, spread over the networks")
	fs.IntVar(&c.startPorts, "startup-ports", 1000, "phase 9: published ports in that state, spread over the endpoints (host ports from 40000)")
	fs.StringVar(&l.firewalls, "ports-firewalls", "iptables,nftables", "phase 9: firewall backends (serve --firewall) of the socket measures; none: no socket part")
	fs.DurationVar(&c.passWindow, "pass-window", 12*time.Second, "phase 9: how long to watch the periodic passes (1 s apart, so that one of every ten is a recheck)")
}

// quickPorts is -quick for phase 9.
func (c *config) quickPorts(set map[string]bool, l *portsLists) {
	def := func(name string, p *int, v int) {
		if !set[name] {
			*p = v
		}
	}
	def("pub-ports", &c.pubPorts, 50)
	def("pub-runs", &c.pubRuns, 3)
	def("startup-networks", &c.startNets, 10)
	def("startup-endpoints", &c.startEps, 100)
	def("startup-ports", &c.startPorts, 100)
	if !set["map-counts"] {
		l.mapCounts = "100,300,1000"
	}
}

func (c *config) parsePorts(l portsLists) error {
	h, ct, ok := strings.Cut(l.pubBase, ":")
	var err1, err2 error
	c.pubHost, err1 = strconv.Atoi(h)
	c.pubCtr, err2 = strconv.Atoi(ct)
	if !ok || err1 != nil || err2 != nil || c.pubHost < 1 || c.pubCtr < 1 {
		return fmt.Errorf("-pub-base %q: give HOSTPORT:CONTAINERPORT, such as 21000:31000", l.pubBase)
	}
	if c.pubPorts < 0 || c.pubHost+c.pubPorts-1 > 65535 || c.pubCtr+c.pubPorts-1 > 65535 {
		return fmt.Errorf("-pub-ports %d from -pub-base %s: the range must fit in ports 1-65535", c.pubPorts, l.pubBase)
	}
	var err error
	if c.mapCounts, err = intList(l.mapCounts); err != nil {
		return fmt.Errorf("-map-counts: %w", err)
	}
	if !slices.IsSorted(c.mapCounts) || c.mapCounts[len(c.mapCounts)-1] > 10000 {
		return errors.New("-map-counts: give ascending counts of at most 10000 (host ports 20000-29999)")
	}
	if c.startNets < 1 || c.startNets > 1024 || c.startEps < c.startNets || c.startEps > 250*c.startNets {
		return errors.New("-startup-networks and -startup-endpoints: 1 to 1024 networks (/24 each), at least one and at most 250 endpoints per network")
	}
	if c.startPorts < 0 || c.startPorts > 25000 {
		return errors.New("-startup-ports: 0 to 25000 (host ports 40000-64999)")
	}
	if c.pubTrials < 1 || c.pubRuns < 1 || c.passWindow < 2*time.Second {
		return errors.New("-pub-trials and -pub-runs must be at least 1, -pass-window at least 2s")
	}
	c.portsFirewalls = nil
	if l.firewalls == "none" {
		return nil
	}
	for _, f := range strings.Split(l.firewalls, ",") {
		f = strings.TrimSpace(f)
		if f != model.FirewallIPTables && f != model.FirewallNFTables {
			return fmt.Errorf("-ports-firewalls: %q is not iptables or nftables", f)
		}
		c.portsFirewalls = append(c.portsFirewalls, f)
	}
	return nil
}

// portsDocker and portsSocket say whether phase 9's part on dockerd and
// its part on the socket run.
func (c config) portsDocker() bool { return c.phases["9"] && c.pubPorts > 0 }
func (c config) portsSocket() bool { return c.phases["9"] && len(c.portsFirewalls) > 0 }
