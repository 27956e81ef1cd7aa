package driver

import (
	"context"

	"github.com/mynet/mynet/internal/model"
)

// followFirewall lets the dataplane move mynet's rules to the firewall
// backend dockerd's rules are in now (serve --firewall auto): every
// network's rules and every published port, ensured in the new backend
// before they leave the old one. Under opMu alone, so that no endpoint
// or port call writes to a backend being left. It reports whether the
// rules moved; they may have moved with an error, which names what was
// left in the old backend (the dataplane retries its removal).
func (d *Driver) followFirewall(ctx context.Context) (bool, error) {
	rules := func() ([]model.Network, []model.Endpoint) {
		nets := make([]model.Network, 0, len(d.networks))
		for _, n := range d.networks {
			nets = append(nets, toBridgeNetwork(n))
		}
		var eps []model.Endpoint
		for _, e := range d.endpoints {
			if n := d.networks[e.NetworkID]; n != nil && len(e.Ports) > 0 {
				eps = append(eps, toBridgeEndpoint(n, e))
			}
		}
		return nets, eps
	}
	from, to, why, err := d.cfg.Dataplane.FollowFirewall(ctx, rules)
	if to == "" {
		return false, err
	}
	inc(d.cfg.FirewallSwitches)
	d.log.Warn("moved mynet's rules to the firewall backend dockerd now uses", "from", from, "to", to, "why", why)
	return true, err
}
