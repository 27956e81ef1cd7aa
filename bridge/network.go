package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// EnsureNetwork makes the network's bridge, addresses and rules exist.
// On error, everything it created in this call is removed again, and only
// that: the reconcile calls it to repair a network whose other rules are
// live. DeleteNetwork undoes it.
func (d *Dataplane) EnsureNetwork(ctx context.Context, n model.Network) (retErr error) {
	log := d.log.With("network_id", model.Short(n.ID), "bridge", n.Bridge)
	var undo netutil.Undo
	defer undo.Rollback(&retErr, log)
	if err := d.ensureBridgeSteps(ctx, n, log, &undo); err != nil {
		return err
	}
	for _, fw := range d.firewalls() {
		if err := fw.ensureNetwork(ctx, n, &undo); err != nil {
			return err
		}
	}
	return failpoint.Inject("bridge.network.rules")
}

// EnsureBridge is EnsureNetwork without the rules: the reconcile ensures
// the rules of all networks at once (EnsureRules).
func (d *Dataplane) EnsureBridge(ctx context.Context, n model.Network) (retErr error) {
	log := d.log.With("network_id", model.Short(n.ID), "bridge", n.Bridge)
	var undo netutil.Undo
	defer undo.Rollback(&retErr, log)
	return d.ensureBridgeSteps(ctx, n, log, &undo)
}

// ensureBridgeSteps makes the bridge, its addresses and its switches
// exist, and pushes what it creates onto undo.
func (d *Dataplane) ensureBridgeSteps(ctx context.Context, n model.Network, log *slog.Logger, undo *netutil.Undo) error {
	what := "network " + model.Short(n.ID)
	if err := stopped(ctx, "creating "+what); err != nil {
		return err
	}
	if err := ensureForwarding(log); err != nil {
		return err
	}
	created, err := d.ensureBridge(n)
	if err != nil {
		return err
	}
	if created {
		undo.Push("delete bridge "+n.Bridge, func() error { return d.removeLink(n.Bridge) })
	}
	if err := failpoint.Inject("bridge.network.bridge"); err != nil {
		return err
	}
	if err := stopped(ctx, "the addresses of bridge "+n.Bridge+" of "+what); err != nil {
		return err
	}
	if err := d.ensureAddrs(n, undo); err != nil {
		return err
	}
	if err := stopped(ctx, "the settings of bridge "+n.Bridge+" of "+what); err != nil {
		return err
	}
	return d.bridgeSysctls(n)
}

// bridgeSysctls sets the bridge's per-interface switches.
func (d *Dataplane) bridgeSysctls(n model.Network) error {
	if len(n.IPv6) > 0 {
		if d.fw6 == nil {
			return fmt.Errorf("network %s has IPv6 but ip6tables is not available to isolate it; install ip6tables", model.Short(n.ID))
		}
		if n.NoBridgeIPv6 {
			// Gateway mode isolated: not even a link-local address, so
			// the host is out of the containers' reach over IPv6, as with
			// Docker's bridge. Frames between the containers still pass.
			if err := writeSysctl("net/ipv6/conf/"+n.Bridge+"/disable_ipv6", "1"); err != nil {
				return fmt.Errorf("disable IPv6 on bridge %s of network %s for gateway mode isolated: %w", n.Bridge, model.Short(n.ID), err)
			}
		} else if err := ignoreRouterAdvertisements(n.Bridge); err != nil {
			// A container must not be able to become the host's IPv6
			// router (CVE-2020-10749).
			return err
		}
	}
	if !n.ICC {
		// Without br_netfilter, frames between two ports of the bridge
		// never reach iptables and the ICC drop would silently do nothing.
		if v, err := readSysctl("net/bridge/bridge-nf-call-iptables"); err != nil || v != "1" {
			return fmt.Errorf("network %s disables inter-container communication, which needs br_netfilter with net.bridge.bridge-nf-call-iptables=1 (run: modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1)", model.Short(n.ID))
		}
	}
	if !n.Internal {
		// Lets the host's own 127.0.0.1 reach published ports: the DNAT
		// target is on the bridge, and the kernel drops loopback sources
		// routed elsewhere unless this is set.
		if err := d.setRouteLocalnet(n.Bridge); err != nil {
			d.log.Warn("published ports will not answer on 127.0.0.1", "bridge", n.Bridge, "err", err)
		}
	}
	return nil
}

// DeleteNetwork removes the network's rules and bridge. Objects that are
// already gone are not an error.
//
// Each step checks ctx first; what a deadline leaves is tagged, an orphan
// for the reconcile. A rollback passes a context without a deadline.
func (d *Dataplane) DeleteNetwork(ctx context.Context, n model.Network) error {
	var errs []error
	steps := []struct {
		what string
		do   func() error
	}{
		{"the rules", func() error { return d.forAll(func(fw firewall) error { return fw.removeNetwork(n.ID) }) }},
		{"bridge " + n.Bridge, func() error { return d.removeOwnedLink(n.Bridge, d.tag("net", n.ID)) }},
		// The engine deletes a network only after its endpoints, so the
		// table of anti-spoofing rules is often empty now; another
		// network's next endpoint creates it again.
		{"the empty anti-spoofing table", d.removeEmptySpoofTable},
	}
	for _, s := range steps {
		if err := stopped(ctx, "removing "+s.what); err != nil {
			errs = append(errs, err)
			break
		}
		if err := s.do(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete network %s: %w", model.Short(n.ID), err)
	}
	return nil
}
