package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// firewall is one address family's packet filter as the Dataplane uses
// it: the rules of networks and of published ports, ensured with an undo
// for what the call added and removed by ID, and read back for the
// fingerprint and the startup claim. iptablesFirewall and nftFirewall
// (serve --firewall) are the production ones; tests use a fake.
type firewall interface {
	// family names the family in fingerprints: iptables or ip6tables, or
	// nftables ip or nftables ip6.
	family() string
	ensureNetwork(ctx context.Context, n model.Network, undo *netutil.Undo) error
	removeNetwork(id string) error
	ensurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping, undo *netutil.Undo) error
	removePorts(ep model.Endpoint, ports []model.PortMapping) error
	removeOrphans(networks, endpoints map[string]bool) error
	// ensureAll adds whichever rules of the networks and of the
	// endpoints' ports are missing, compared with the ruleset as a whole,
	// pushes what it adds onto undo and returns how many rules that is.
	ensureAll(ctx context.Context, networks []model.Network, endpoints []model.Endpoint, undo *netutil.Undo) (int, error)
	// hasRules reports whether a rule of this instance names a network.
	hasRules() (bool, error)
	// ownLines are the lines of the ruleset that are this instance's or
	// decide where its rules go, for the fingerprint.
	ownLines() ([]string, error)
}

// EnsureRules is the reconcile's check of the firewall: for each family it
// reads the ruleset once, compares it with the rules of all the networks
// and of the endpoints' published ports (ep.Ports), and adds what is
// missing in one transaction. It returns what it added, per family, for
// the log; on error it removes what it added, and only that. Unlike
// EnsureNetwork and EnsurePorts per object, which read the ruleset each,
// it costs one read per family whatever the number of networks and ports.
func (d *Dataplane) EnsureRules(ctx context.Context, networks []model.Network, endpoints []model.Endpoint) (repaired []string, retErr error) {
	var undo netutil.Undo
	defer undo.Rollback(&retErr, d.log)
	for _, fw := range d.firewalls() {
		n, err := fw.ensureAll(ctx, networks, endpoints, &undo)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			repaired = append(repaired, fmt.Sprintf("%s: %d rules", fw.family(), n))
		}
	}
	return repaired, nil
}

// firewalls are the families rules are kept in.
func (d *Dataplane) firewalls() []firewall {
	if d.fw6 == nil {
		return []firewall{d.fw4}
	}
	return []firewall{d.fw4, d.fw6}
}

// forAll runs fn for each family and joins the errors.
func (d *Dataplane) forAll(fn func(firewall) error) error {
	var errs []error
	for _, fw := range d.firewalls() {
		errs = append(errs, fn(fw))
	}
	return errors.Join(errs...)
}
