package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
)

// claimAddress is RequestAddress on a pool bound to a cluster network: the
// address is claimed in the cluster store (one write, which publishes the
// endpoint's advert with it), then recorded in the local pool as any
// allocation, so that the local state stays whole with the store down.
// Called and returns with ipamMu held; the store call runs without it.
func (d *Driver) claimAddress(ctx context.Context, p *poolEntry, req AddressRequest) (netip.Prefix, error) {
	cl := d.cfg.Cluster
	if cl == nil {
		return netip.Prefix{}, fmt.Errorf("pool %s belongs to cluster network %s, but mynet runs without cluster mode; start mynet serve with --cluster-store", p.rec.ID, p.cluster)
	}
	adv := model.EndpointAdvert{Host: cl.HostID, MAC: req.Owner, VTEP: cl.VXLAN.Local}
	var addr netip.Addr
	if req.Address.IsValid() {
		addr = req.Address
		for p.Wait(&d.ipamMu, addr) {
		}
		if err := p.Reserve(addr); err != nil {
			return netip.Prefix{}, BadRequest(fmt.Errorf("cluster network %s: %w", p.cluster, err))
		}
		if err := commitPoint(ctx); err != nil {
			p.Pool.Release(addr)
			return netip.Prefix{}, fmt.Errorf("request address %s in cluster network %s: nothing allocated: %w", addr, p.cluster, err)
		}
		if adv.MAC == "" {
			adv.MAC = ClusterMAC(addr)
		}
		if err := p.Write(&d.ipamMu, addr, func() error {
			_, err := cl.Store.ClaimAddress(ctx, p.cluster, addr, adv)
			return err
		}); err != nil {
			p.Pool.Release(addr)
			return netip.Prefix{}, d.claimError(ctx, p, err)
		}
	} else {
		var err error
		if addr, err = d.claimNext(ctx, p, adv); err != nil {
			return netip.Prefix{}, err
		}
	}
	if err := d.recordClaim(ctx, p, addr, req); err != nil {
		return netip.Prefix{}, err
	}
	return p.prefixed(addr), nil
}

// claimNext claims the store's next free address (its round robin holds
// across hosts) and takes it in the local pool.
func (d *Driver) claimNext(ctx context.Context, p *poolEntry, adv model.EndpointAdvert) (netip.Addr, error) {
	cl := d.cfg.Cluster
	if err := commitPoint(ctx); err != nil {
		return netip.Addr{}, fmt.Errorf("request address in cluster network %s: nothing allocated: %w", p.cluster, err)
	}
	d.ipamMu.Unlock()
	addr, err := cl.Store.ClaimAddress(ctx, p.cluster, netip.Addr{}, adv)
	d.ipamMu.Lock()
	if err != nil {
		return addr, d.claimError(ctx, p, err)
	}
	for p.Wait(&d.ipamMu, addr) {
	}
	if err := p.Reserve(addr); err != nil {
		// The store knows the address free and this host's pool holds it:
		// a release of it is still queued. Leave both as they are.
		d.releaseClaim(context.WithoutCancel(ctx), p.cluster, addr)
		return addr, fmt.Errorf("cluster network %s: the store handed out %s, which this host still holds (a release waits for the store); try again: %w", p.cluster, addr, err)
	}
	return addr, nil
}

// recordClaim records a claimed address in the local state, as any
// allocation; if that fails, the claim is given back.
func (d *Driver) recordClaim(ctx context.Context, p *poolEntry, addr netip.Addr, req AddressRequest) error {
	p.SetOwner(addr, req.Owner)
	cursor := ""
	if !req.Address.IsValid() {
		cursor = addr.String()
	}
	err := p.Write(&d.ipamMu, addr, func() error { return d.cfg.Store.AddAddress(p.rec.ID, addr.String(), req.Owner, cursor) })
	if err != nil {
		p.Release(addr)
		d.ipamMu.Unlock()
		d.releaseClaim(context.WithoutCancel(ctx), p.cluster, addr)
		d.ipamMu.Lock()
		return fmt.Errorf("cluster network %s: record address %s: %w", p.cluster, addr, err)
	}
	return nil
}

// claimsLister is the part of the cluster store that counts claims, for
// the exhaustion error; internal/cluster.Store has it.
type claimsLister interface {
	Claims(ctx context.Context, network string) ([]model.EndpointAdvert, int64, error)
}

// claimError words a failed claim for the engine's user; under ipamMu.
func (d *Driver) claimError(ctx context.Context, p *poolEntry, err error) error {
	if !errors.Is(err, ipam.ErrExhausted) {
		if errors.Is(err, ipam.ErrOutOfRange) || errors.Is(err, ipam.ErrInUse) {
			err = BadRequest(err)
		}
		return fmt.Errorf("request address in cluster network %s: %w", p.cluster, err)
	}
	msg := fmt.Sprintf("no free address in cluster network %s (%s)", p.cluster, p.Prefix())
	if cl, ok := d.cfg.Cluster.Store.(claimsLister); ok {
		if claims, _, lerr := cl.Claims(ctx, p.cluster); lerr == nil {
			hosts := map[string]bool{}
			for _, c := range claims {
				hosts[c.Host] = true
			}
			msg += fmt.Sprintf(": %d addresses in use across %d hosts", len(claims), len(hosts))
		}
	}
	return BadRequest(fmt.Errorf("%s; remove containers on any host, or use a network with a larger --subnet: %w", msg, err))
}

// reclaimMAC publishes an endpoint's MAC when it is not the one its
// address was claimed with (the user set one, or the engine sent none when
// it asked for the address): a second store write, before the endpoint is
// built, so that a failure leaves nothing. Under opMu shared.
func (d *Driver) reclaimMAC(ctx context.Context, n networkView, endpointID, mac, ipv4 string) error {
	cl := d.cfg.Cluster
	pfx, err := netip.ParsePrefix(ipv4)
	if n.cluster == "" || cl == nil || err != nil {
		return nil
	}
	d.ipamMu.Lock()
	p := d.pools[n.pool]
	same := p != nil && p.OwnerOf(pfx.Addr()) == mac
	d.ipamMu.Unlock()
	if same || p == nil {
		return nil
	}
	adv := model.EndpointAdvert{Host: cl.HostID, MAC: mac, VTEP: cl.VXLAN.Local, Endpoint: endpointID}
	if _, err := cl.Store.ClaimAddress(ctx, n.cluster, pfx.Addr(), adv); err != nil {
		return fmt.Errorf("publish MAC %s of endpoint %s in cluster network %s: %w", mac, model.Short(endpointID), n.cluster, err)
	}
	return nil
}

// networkView is what reclaimMAC needs of a network.
type networkView struct{ cluster, pool string }
