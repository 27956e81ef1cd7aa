package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

// CreateOrJoinNetwork makes host a member of the cluster network spec.Name.
// The first host to ask creates it: the record and the lowest free VNI are
// written in one transaction that succeeds only if neither key exists yet
// (first writer wins). A later host with the same spec joins (a
// compare-and-swap adding it to the members); a different spec is refused
// with ErrSpecMismatch naming each difference. Asking again is harmless.
// Two hosts creating at once end with one record and one VNI: the loser's
// transaction fails, and its next round finds the record and joins it.
func (s *Store) CreateOrJoinNetwork(ctx context.Context, spec model.ClusterSpec, host string) (model.ClusterNetwork, error) {
	var rec model.ClusterNetwork
	if err := validateSpec(spec, host); err != nil {
		return rec, err
	}
	err := s.call(ctx, "create or join network "+spec.Name, func(ctx context.Context) error {
		for range casAttempts {
			r, done, err := s.tryCreateOrJoin(ctx, spec, host)
			if err != nil || done {
				rec = r
				return err
			}
		}
		return ErrContention
	})
	return rec, err
}

func validateSpec(spec model.ClusterSpec, host string) error {
	if err := model.ValidateClusterName("cluster network", spec.Name); err != nil {
		return err
	}
	if err := model.ValidateClusterName("host ID", host); err != nil {
		return err
	}
	if !spec.Subnet.IsValid() || spec.Subnet != spec.Subnet.Masked() {
		return fmt.Errorf("cluster network %s: subnet %q must be a prefix without host bits, e.g. 10.77.0.0/24", spec.Name, spec.Subnet)
	}
	return nil
}

// tryCreateOrJoin is one round; done is false when a compare-and-swap lost
// to another writer and the round must be repeated on fresh data.
func (s *Store) tryCreateOrJoin(ctx context.Context, spec model.ClusterSpec, host string) (model.ClusterNetwork, bool, error) {
	key := s.keys.Network(spec.Name)
	rec, rev, found, err := s.getNetwork(ctx, spec.Name)
	if err != nil {
		return rec, false, err
	}
	if found {
		if d := rec.Spec.Diff(spec); d != nil {
			return rec, false, fmt.Errorf("%w: %s (create it with the cluster's spec, or choose another mynet.cluster name)",
				ErrSpecMismatch, strings.Join(d, "; "))
		}
		if rec.HasMember(host) {
			return rec, true, nil
		}
		rec.Members = append(rec.Members, host)
		ok, err := s.casPut(ctx, key, rev, rec)
		return rec, ok, err
	}
	vni, err := s.lowestFreeVNI(ctx)
	if err != nil {
		return rec, false, err
	}
	rec = model.ClusterNetwork{Spec: spec, VNI: vni, Members: []string{host}}
	val, err := json.Marshal(rec)
	if err != nil {
		return rec, false, err
	}
	vkey := s.keys.VNI(vni)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(vkey), "=", 0)).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(vkey, spec.Name)).
		Commit()
	if err != nil {
		return rec, false, err
	}
	if resp.Succeeded {
		s.log.InfoContext(ctx, "cluster network created", "network", spec.Name, "vni", vni, "host", host)
	}
	return rec, resp.Succeeded, nil
}

// lowestFreeVNI reads the allocated VNIs and returns the lowest free one of
// the range. It writes nothing: the caller's transaction claims it.
func (s *Store) lowestFreeVNI(ctx context.Context) (uint32, error) {
	resp, err := s.cli.Get(ctx, s.keys.VNIs(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	used := make(map[uint32]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.keys.VNIs()), 10, 32)
		if err != nil {
			s.log.WarnContext(ctx, "ignoring a malformed VNI key", "key", string(kv.Key))
			continue
		}
		used[uint32(n)] = true
	}
	for v := s.cfg.VNIMin; v <= s.cfg.VNIMax && v != 0; v++ {
		if !used[v] {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w in %d-%d (%d allocated)", ErrNoVNI, s.cfg.VNIMin, s.cfg.VNIMax, len(used))
}

// LeaveNetwork removes host from the members of a cluster network. The last
// member's leave deletes the network: its record, its VNI, its cursor and
// any claims left. It reports whether the network was deleted. A network
// that does not exist, or of which host is no member, is no error, so that
// a queued leave can be replayed.
func (s *Store) LeaveNetwork(ctx context.Context, name, host string) (deleted bool, err error) {
	err = s.call(ctx, "leave network "+name+" for host "+host, func(ctx context.Context) error {
		for range casAttempts {
			done, del, err := s.tryLeave(ctx, name, host)
			if err != nil || done {
				deleted = del
				return err
			}
		}
		return ErrContention
	})
	return deleted, err
}

// tryLeave is one round of LeaveNetwork; its transaction holds only if
// the extra compares hold too.
func (s *Store) tryLeave(ctx context.Context, name, host string, extra ...clientv3.Cmp) (done, deleted bool, err error) {
	rec, rev, found, err := s.getNetwork(ctx, name)
	if err != nil || !found || !rec.HasMember(host) {
		return true, false, err
	}
	rec.Members = slices.DeleteFunc(rec.Members, func(m string) bool { return m == host })
	key := s.keys.Network(name)
	if len(rec.Members) > 0 {
		ok, err := s.casPut(ctx, key, rev, rec, extra...)
		return ok, false, err
	}
	// The compare on the record's revision orders this against a join:
	// either the join lands first (and this round fails and finds a
	// member), or the join finds no record and creates a new network.
	resp, err := s.cli.Txn(ctx).
		If(append(extra, clientv3.Compare(clientv3.ModRevision(key), "=", rev))...).
		Then(clientv3.OpDelete(key),
			clientv3.OpDelete(s.keys.VNI(rec.VNI)),
			clientv3.OpDelete(s.keys.Cursor(name)),
			clientv3.OpDelete(s.keys.Claims(name), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return false, false, err
	}
	if resp.Succeeded {
		s.log.InfoContext(ctx, "cluster network deleted", "network", name, "vni", rec.VNI, "host", host)
	}
	return resp.Succeeded, resp.Succeeded, nil
}

// Network returns a cluster network's record.
func (s *Store) Network(ctx context.Context, name string) (model.ClusterNetwork, error) {
	var rec model.ClusterNetwork
	err := s.call(ctx, "get network "+name, func(ctx context.Context) error {
		r, _, found, err := s.getNetwork(ctx, name)
		if err == nil && !found {
			err = fmt.Errorf("%w: %s", ErrNetworkNotFound, name)
		}
		rec = r
		return err
	})
	return rec, err
}

// Networks lists every cluster network, by name.
func (s *Store) Networks(ctx context.Context) ([]model.ClusterNetwork, error) {
	var out []model.ClusterNetwork
	err := s.call(ctx, "list networks", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.keys.Networks(), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			var rec model.ClusterNetwork
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				return fmt.Errorf("decode %s: %w", kv.Key, err)
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// getNetwork reads a network's record and the revision it was last
// written at, for a compare-and-swap.
func (s *Store) getNetwork(ctx context.Context, name string) (model.ClusterNetwork, int64, bool, error) {
	var rec model.ClusterNetwork
	resp, err := s.cli.Get(ctx, s.keys.Network(name))
	if err != nil || len(resp.Kvs) == 0 {
		return rec, 0, false, err
	}
	kv := resp.Kvs[0]
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return rec, 0, false, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	return rec, kv.ModRevision, true, nil
}

// casPut writes v at key if key is still at revision rev (and the extra
// compares hold).
func (s *Store) casPut(ctx context.Context, key string, rev int64, v any, extra ...clientv3.Cmp) (bool, error) {
	val, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	resp, err := s.cli.Txn(ctx).
		If(append(extra, clientv3.Compare(clientv3.ModRevision(key), "=", rev))...).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}
