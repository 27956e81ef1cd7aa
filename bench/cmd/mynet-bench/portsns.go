package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// portsBackend is phase 9's part on the socket of a namespace instance
// with one firewall backend.
type portsBackend struct {
	Firewall string         `json:"firewall"`
	Mappings []mappingPoint `json:"mappings"`
	Startup  *startupResult `json:"startup,omitempty"`
	Pass     *passResult    `json:"periodic_pass,omitempty"`
	Error    string         `json:"error,omitempty"`
	inst     *instance      // the instance now running
	metrics  *metricsClient // its metrics listener
	ns, name string         // its namespace and instance name
	extra    []string       // serve's flags beyond name and state
	b        *bench         // the run
	cleanup  *cleanupStack  // the run's
	nets     []benchNet     // the startup state's networks
}

// mappingPoint is N port mappings published on one endpoint with one
// ProgramExternalConnectivity, then revoked.
type mappingPoint struct {
	N          int    `json:"n"`
	PublishS   num    `json:"publish_s"`
	UnpublishS num    `json:"unpublish_s"`
	PublishUs  num    `json:"publish_us_per_mapping"`
	Skipped    string `json:"skipped,omitempty"`
	Err        string `json:"error,omitempty"`
}

// portsNetns runs phase 9's socket measures with each backend of
// -ports-firewalls, each in a scratch namespace of its own.
func (b *bench) portsNetns(ctx context.Context) error {
	if b.rep.Ports == nil {
		b.rep.Ports = &portsResult{Ports: b.cfg.pubPorts}
	}
	var errs []error
	for _, fw := range b.cfg.portsFirewalls {
		if ctx.Err() != nil {
			break
		}
		pb := &portsBackend{Firewall: fw, b: b, cleanup: &b.cleanup}
		err := pb.run(ctx)
		if err != nil {
			pb.Error = err.Error()
			errs = append(errs, fmt.Errorf("%s backend: %w", fw, err))
			logf("phase 9: %s backend FAILED: %v", fw, err)
		}
		b.rep.Ports.Backends = append(b.rep.Ports.Backends, *pb)
	}
	return errors.Join(errs...)
}

func (pb *portsBackend) run(ctx context.Context) error {
	mark := pb.cleanup.len()
	defer pb.cleanup.runTo(mark)
	short := pb.Firewall[:3]
	pb.ns = "mynet-bench-" + pb.b.runID + "-" + short
	pb.name = "mynet-bench-ns-" + pb.b.runID + "-" + short
	sock := filepath.Join(pb.b.workDir, pb.name+"-metrics.sock")
	pb.extra = []string{"--firewall", pb.Firewall, "--metrics-socket", sock}
	pb.metrics = newMetricsClient(sock)
	if _, err := runCmd(ctx, nil, "ip", "netns", "add", pb.ns); err != nil {
		return err
	}
	pb.cleanup.push("delete netns "+pb.ns, func(ctx context.Context) error {
		_, err := runCmd(ctx, nil, "ip", "netns", "del", pb.ns)
		return err
	})
	if _, err := runCmd(ctx, nil, "ip", "netns", "exec", pb.ns, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	logf("phase 9: %s backend: mynet in network namespace %s", pb.Firewall, pb.ns)
	inst, err := startInstance(ctx, pb.b.mynetBin, pb.name, pb.ns, pb.b.workDir, pb.extra...)
	if err != nil {
		return err
	}
	pb.inst = inst
	// Whichever instance runs at the end is stopped.
	pb.cleanup.push("stop mynet "+pb.name, func(ctx context.Context) error { return pb.inst.stop(ctx) })
	if err := pb.mappings(ctx); err != nil {
		return err
	}
	if err := pb.startup(ctx); err != nil {
		return err
	}
	return pb.periodic(ctx)
}

// mappings publishes each of -map-counts mappings on one endpoint of a
// network of its own, and revokes them, then removes the network. A count
// whose time, estimated linearly from the one before, would pass -map-cap
// is skipped, as are those after a failure.
func (pb *portsBackend) mappings(ctx context.Context) error {
	c := pb.inst.client
	n, err := createNetwork(ctx, c, "10.199.0.0/16")
	if err != nil {
		return fmt.Errorf("create the mappings network: %w", err)
	}
	e, err := n.up(ctx, c, nil)
	if err != nil {
		return err
	}
	var prev *mappingPoint
	for _, count := range pb.b.cfg.mapCounts {
		p := mappingPoint{N: count}
		switch {
		case prev != nil && prev.Err != "":
			p.Skipped = fmt.Sprintf("%d mappings failed", prev.N)
		case prev != nil && prev.Skipped != "":
			p.Skipped = fmt.Sprintf("%d was skipped", prev.N)
		case prev != nil && estimate(prev, count) > pb.b.cfg.mapCap.Seconds():
			p.Skipped = fmt.Sprintf("%d would take about %.0f s (from %d in %.1f s + %.1f s), over -map-cap %v",
				count, estimate(prev, count), prev.N, float64(prev.PublishS), float64(prev.UnpublishS), pb.b.cfg.mapCap)
		default:
			pb.mapOnce(ctx, n, e, &p)
		}
		if p.Skipped != "" {
			logf("phase 9: %s: %d mappings skipped: %s", pb.Firewall, count, p.Skipped)
		}
		pb.Mappings = append(pb.Mappings, p)
		prev = &pb.Mappings[len(pb.Mappings)-1]
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return removeNetwork(ctx, c, n, e)
}

// estimate is the time of count mappings at prev's cost per mapping.
func estimate(prev *mappingPoint, count int) float64 {
	return (float64(prev.PublishS) + float64(prev.UnpublishS)) * float64(count) / float64(prev.N)
}

func (pb *portsBackend) mapOnce(ctx context.Context, n benchNet, e endpoint, p *mappingPoint) {
	c := pb.inst.client
	logf("phase 9: %s: publishing %d mappings on one endpoint", pb.Firewall, p.N)
	start := time.Now()
	err := publishRange(ctx, c, n, e, 20000, 30000, p.N)
	p.PublishS = num(time.Since(start).Seconds())
	p.PublishUs = num(float64(p.PublishS) * 1e6 / float64(p.N))
	// Revoke even after a failed publish: it removes what is left.
	start = time.Now()
	rerr := c.call(ctx, "NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": n.id, "EndpointID": e.id}, nil)
	p.UnpublishS = num(time.Since(start).Seconds())
	if err = errors.Join(err, rerr); err != nil {
		p.Err = err.Error()
		logf("phase 9: %s: %d mappings: %v", pb.Firewall, p.N, err)
		return
	}
	logf("phase 9: %s: %d mappings: publish %.2f s, unpublish %.2f s", pb.Firewall, p.N, float64(p.PublishS), float64(p.UnpublishS))
}

// publishRange publishes container ports ctrBase.. of e on host ports
// hostBase.., count of each, in one request, with one binding per port as
// the engine sends `-p A-B:C-D`.
func publishRange(ctx context.Context, c *pluginClient, n benchNet, e endpoint, hostBase, ctrBase, count int) error {
	pm := make([]map[string]any, 0, count)
	exposed := make([]map[string]any, 0, count)
	for i := range count {
		pm = append(pm, map[string]any{"Proto": 6, "IP": "", "Port": ctrBase + i, "HostIP": "", "HostPort": hostBase + i, "HostPortEnd": hostBase + i})
		exposed = append(exposed, map[string]any{"Proto": 6, "Port": ctrBase + i})
	}
	return publishMap(ctx, c, n, e, pm, exposed)
}

func publishMap(ctx context.Context, c *pluginClient, n benchNet, e endpoint, pm, exposed []map[string]any) error {
	req := map[string]any{
		"NetworkID": n.id, "EndpointID": e.id,
		"Options": map[string]any{"com.docker.network.portmap": pm, "com.docker.network.endpoint.exposedports": exposed},
	}
	return c.call(ctx, "NetworkDriver.ProgramExternalConnectivity", req, nil)
}

// removeNetwork takes e down and removes n as the engine does.
func removeNetwork(ctx context.Context, c *pluginClient, n benchNet, e endpoint) error {
	err := n.down(ctx, c, nil, e)
	err = errors.Join(err, c.call(ctx, "NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": n.id}, nil))
	gw, _, _ := strings.Cut(n.gateway, "/") // the engine releases the bare address
	err = errors.Join(err, c.call(ctx, "IpamDriver.ReleaseAddress", map[string]any{"PoolID": n.poolID, "Address": gw}, nil))
	return errors.Join(err, c.call(ctx, "IpamDriver.ReleasePool", map[string]any{"PoolID": n.poolID}, nil))
}

// flushRules removes mynet's rules behind its back, as a firewall reload
// does: under iptables every rule of its chains (the chains and the hooks
// into them stay), under nftables its tables.
func (pb *portsBackend) flushRules(ctx context.Context) error {
	exec := func(args ...string) error {
		_, err := runCmd(ctx, nil, "ip", append([]string{"netns", "exec", pb.ns}, args...)...)
		return err
	}
	var flushed int
	if pb.Firewall == model.FirewallNFTables {
		for _, fam := range []string{"ip", "ip6"} {
			if exec("nft", "delete", "table", fam, model.NFTTableName(pb.name)) == nil {
				flushed++
			}
		}
	} else {
		for _, tc := range model.ChainsFor(pb.name).Tables() {
			for _, tool := range []string{"iptables", "ip6tables"} {
				if exec(tool, "-w", "-t", tc.Table, "-F", tc.Chain) == nil {
					flushed++
				}
			}
		}
	}
	if flushed == 0 {
		return fmt.Errorf("found none of mynet's %s rules to flush in %s", pb.Firewall, pb.ns)
	}
	return nil
}
