package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
)

// ClaimAddress claims an address of a cluster network for adv.Host and
// publishes adv (with IP set to the address) in the same transaction, so
// that no host ever sees a claim without its endpoint's advert.
//
// With a zero want it claims the next free address after the cluster-wide
// cursor (round-robin, as the local IPAM does, so that a released address
// is not handed out again at once); the cursor moves in the same
// transaction. With want set it claims that address, and the cursor stays.
//
// Claiming an address the same host already holds (for the same endpoint,
// or where either side names none) succeeds and updates the advert: a
// replayed request, a MAC known only later, or a host re-asserting its
// claims after a partition. An address held by another host or endpoint
// is refused with ErrAddressInUse naming the holder, never overwritten.
func (s *Store) ClaimAddress(ctx context.Context, network string, want netip.Addr, adv model.EndpointAdvert) (netip.Addr, error) {
	what := "claim the next address"
	if want.IsValid() {
		what = "claim address " + want.String()
	}
	var got netip.Addr
	err := s.call(ctx, what+" on network "+network+" for host "+adv.Host, func(ctx context.Context) error {
		for range casAttempts {
			var done bool
			var err error
			if want.IsValid() {
				got, done, err = s.tryClaim(ctx, network, want, adv)
			} else {
				got, done, err = s.tryClaimNext(ctx, network, adv)
			}
			if err != nil || done {
				return err
			}
		}
		return ErrContention
	})
	return got, err
}

// tryClaim is one round of claiming a given address.
func (s *Store) tryClaim(ctx context.Context, network string, a netip.Addr, adv model.EndpointAdvert) (netip.Addr, bool, error) {
	key := s.keys.Claim(network, a)
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.keys.Network(network)), clientv3.OpGet(key)).Commit()
	if err != nil {
		return a, false, err
	}
	rec, err := s.decodeNetwork(network, resp.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return a, false, err
	}
	if _, err := s.newPool(rec, nil); err != nil {
		return a, false, err
	}
	if !rec.Spec.Subnet.Contains(a) || a == rec.Spec.Gateway || ipam.ReservedHost(rec.Spec.Subnet, a) != "" {
		return a, false, fmt.Errorf("%w: %s is not a host address of %s (gateway %s)", ipam.ErrOutOfRange, a, rec.Spec.Subnet, rec.Spec.Gateway)
	}
	adv.IP = a
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
		var held model.EndpointAdvert
		if err := json.Unmarshal(kvs[0].Value, &held); err != nil {
			return a, false, fmt.Errorf("decode %s: %w", key, err)
		}
		if !sameHolder(held, adv) {
			return a, false, fmt.Errorf("%w: %s on network %s is held by host %s (endpoint %s)",
				ErrAddressInUse, a, network, held.Host, model.Short(held.Endpoint))
		}
		adv = merge(held, adv)
		if adv == held {
			return a, true, nil
		}
		ok, err := s.casPut(ctx, key, kvs[0].ModRevision, adv)
		return a, ok, err
	}
	val, err := json.Marshal(adv)
	if err != nil {
		return a, false, err
	}
	put, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return a, false, err
	}
	return a, put.Succeeded, nil
}

// sameHolder reports whether a claim held as held may be re-claimed by adv.
func sameHolder(held, adv model.EndpointAdvert) bool {
	return held.Host == adv.Host && (held.Endpoint == "" || adv.Endpoint == "" || held.Endpoint == adv.Endpoint)
}

// merge keeps what the held advert knows and the new one leaves empty.
func merge(held, adv model.EndpointAdvert) model.EndpointAdvert {
	if adv.MAC == "" {
		adv.MAC = held.MAC
	}
	if adv.Endpoint == "" {
		adv.Endpoint = held.Endpoint
	}
	if !adv.VTEP.IsValid() {
		adv.VTEP = held.VTEP
	}
	return adv
}

// tryClaimNext is one round of claiming the next free address: it reads
// the record, the cursor and the claimed addresses at one revision, picks
// the address, and writes claim and cursor only if neither moved since.
func (s *Store) tryClaimNext(ctx context.Context, network string, adv model.EndpointAdvert) (netip.Addr, bool, error) {
	ckey := s.keys.Cursor(network)
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.keys.Network(network)),
		clientv3.OpGet(ckey),
		clientv3.OpGet(s.keys.Claims(network), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return netip.Addr{}, false, err
	}
	rec, err := s.decodeNetwork(network, resp.Responses[0].GetResponseRange().Kvs)
	if err != nil {
		return netip.Addr{}, false, err
	}
	pool, err := s.newPool(rec, resp.Responses[2].GetResponseRange().Kvs)
	if err != nil {
		return netip.Addr{}, false, err
	}
	var cursorRev int64
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
		cursorRev = kvs[0].ModRevision
		if c, err := netip.ParseAddr(string(kvs[0].Value)); err == nil {
			pool.SetCursor(c)
		}
	}
	a, err := pool.Allocate()
	if err != nil {
		return a, false, fmt.Errorf("network %s: %w (claimed cluster-wide)", network, err)
	}
	adv.IP = a
	val, err := json.Marshal(adv)
	if err != nil {
		return a, false, err
	}
	key := s.keys.Claim(network, a)
	put, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.ModRevision(ckey), "=", cursorRev)).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(ckey, a.String())).
		Commit()
	if err != nil {
		return a, false, err
	}
	return a, put.Succeeded, nil
}

// newPool builds the network's pool with the gateway and the claimed
// addresses (keys of claims) marked used.
func (s *Store) newPool(rec model.ClusterNetwork, claims []*mvccpb.KeyValue) (*ipam.Pool, error) {
	pool, err := ipam.NewPool(rec.Spec.Subnet, rec.Spec.IPRange)
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", rec.Spec.Name, err)
	}
	if rec.Spec.Gateway.IsValid() {
		_ = pool.Reserve(rec.Spec.Gateway) // outside the subnet: nothing to keep free
	}
	for _, kv := range claims {
		if a, err := s.keys.ClaimAddr(rec.Spec.Name, string(kv.Key)); err == nil {
			_ = pool.Reserve(a) // a foreign or reserved address takes nothing from the pool
		}
	}
	return pool, nil
}

func (s *Store) decodeNetwork(name string, kvs []*mvccpb.KeyValue) (model.ClusterNetwork, error) {
	var rec model.ClusterNetwork
	if len(kvs) == 0 {
		return rec, fmt.Errorf("%w: %s (create it on this host first)", ErrNetworkNotFound, name)
	}
	if err := json.Unmarshal(kvs[0].Value, &rec); err != nil {
		return rec, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
	}
	return rec, nil
}

// ReleaseAddress deletes host's claim of an address, and with it the
// endpoint's advert. An address that is not claimed, or is claimed by
// another host (freed after a partition and claimed again), is left alone
// and is no error: a delete must always succeed, and a queued one may be
// replayed long after.
func (s *Store) ReleaseAddress(ctx context.Context, network string, a netip.Addr, host string) error {
	key := s.keys.Claim(network, a)
	return s.call(ctx, "release address "+a.String()+" on network "+network+" for host "+host, func(ctx context.Context) error {
		for range casAttempts {
			resp, err := s.cli.Get(ctx, key)
			if err != nil {
				return err
			}
			if len(resp.Kvs) == 0 {
				return nil
			}
			var held model.EndpointAdvert
			if err := json.Unmarshal(resp.Kvs[0].Value, &held); err == nil && held.Host != host {
				s.log.InfoContext(ctx, "not releasing an address another host holds",
					"network", network, "addr", a, "host", host, "holder", held.Host)
				return nil
			}
			del, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpDelete(key)).
				Commit()
			if err != nil || del.Succeeded {
				return err
			}
		}
		return ErrContention
	})
}

// Claims lists a network's endpoint adverts and the revision they were
// read at (a watch from rev+1 misses nothing).
func (s *Store) Claims(ctx context.Context, network string) ([]model.EndpointAdvert, int64, error) {
	var out []model.EndpointAdvert
	var rev int64
	err := s.call(ctx, "list claims of network "+network, func(ctx context.Context) error {
		var err error
		out, rev, err = s.listClaims(ctx, s.keys.Claims(network))
		return err
	})
	return out, rev, err
}

func (s *Store) listClaims(ctx context.Context, prefix string) ([]model.EndpointAdvert, int64, error) {
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	out := make([]model.EndpointAdvert, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var adv model.EndpointAdvert
		if err := json.Unmarshal(kv.Value, &adv); err != nil {
			s.log.WarnContext(ctx, "ignoring a malformed claim", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, adv)
	}
	return out, resp.Header.Revision, nil
}
