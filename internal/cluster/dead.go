package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

// txnChunk bounds the deletes of one transaction, below etcd's default
// --max-txn-ops of 128.
const txnChunk = 64

// FreeDeadHost removes a dead host from the cluster: its address claims
// (and so its adverts, which every host's watch turns into removed
// entries), its memberships (the last member's leave deletes a network),
// and its registration. It is for a live host to call once the dead host's
// liveness key has been gone for the grace period; the grace period is the
// caller's, the check that the host is dead is made here, in every
// transaction, so that a host coming back in between keeps what is left.
// It returns the number of claims freed; freeing a host freed already
// frees nothing and is no error.
func (s *Store) FreeDeadHost(ctx context.Context, id string) (freed int, err error) {
	err = s.call(ctx, "free claims of dead host "+id, func(ctx context.Context) error {
		for range casAttempts {
			n, done, err := s.tryFreeClaims(ctx, id)
			freed += n
			if err != nil {
				return err
			}
			if done {
				return s.dropDeadHost(ctx, id)
			}
		}
		return ErrContention
	})
	if freed > 0 {
		s.log.InfoContext(ctx, "freed the claims of a dead host", "host", id, "claims", freed)
	}
	return freed, err
}

// deadCmp holds while the host has no liveness key.
func (s *Store) deadCmp(id string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(s.keys.Alive(id)), "=", 0)
}

// tryFreeClaims deletes the host's claims in chunks, each only if the host
// is still dead and the claim unchanged; done is true once none is left.
func (s *Store) tryFreeClaims(ctx context.Context, id string) (freed int, done bool, err error) {
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.keys.Alive(id), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.keys.AllClaims(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return 0, false, err
	}
	if len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
		return 0, false, errHostAlive(id)
	}
	var cmps []clientv3.Cmp
	var dels []clientv3.Op
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var adv model.EndpointAdvert
		if json.Unmarshal(kv.Value, &adv) != nil || adv.Host != id {
			continue
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
		dels = append(dels, clientv3.OpDelete(string(kv.Key)))
	}
	if len(dels) == 0 {
		return 0, true, nil
	}
	n := min(len(dels), txnChunk)
	txn, err := s.cli.Txn(ctx).If(append(cmps[:n:n], s.deadCmp(id))...).Then(dels[:n]...).Commit()
	if err != nil || !txn.Succeeded {
		return 0, false, err
	}
	return n, n == len(dels), nil
}

// dropDeadHost removes the host from every network it joined, then its
// registration.
func (s *Store) dropDeadHost(ctx context.Context, id string) error {
	resp, err := s.cli.Get(ctx, s.keys.Networks(), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range resp.Kvs {
		var rec model.ClusterNetwork
		if json.Unmarshal(kv.Value, &rec) != nil || !rec.HasMember(id) {
			continue
		}
		for attempt := 0; ; attempt++ {
			done, _, err := s.tryLeave(ctx, rec.Spec.Name, id, s.deadCmp(id))
			if err != nil {
				return err
			}
			if done {
				break
			}
			if alive, err := s.cli.Get(ctx, s.keys.Alive(id), clientv3.WithKeysOnly()); err != nil || len(alive.Kvs) > 0 {
				if err == nil {
					err = errHostAlive(id) // it came back: it keeps its memberships
				}
				return err
			}
			if attempt == casAttempts {
				return ErrContention
			}
		}
	}
	txn, err := s.cli.Txn(ctx).If(s.deadCmp(id)).Then(clientv3.OpDelete(s.keys.Host(id))).Commit()
	if err == nil && !txn.Succeeded {
		err = errHostAlive(id)
	}
	return err
}

func errHostAlive(id string) error {
	return fmt.Errorf("%w: host %s has a liveness key, so its claims stay", ErrHostAlive, id)
}
