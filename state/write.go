package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	bolt "go.etcd.io/bbolt"
)

// PutNetwork creates or replaces a network record.
func (s *Store) PutNetwork(n Network) error {
	return s.update("save network "+model.Short(n.ID), func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketNetworks), n.ID, n)
	})
}

// DeleteNetwork removes a network and any endpoint records left under it.
func (s *Store) DeleteNetwork(id string) error {
	return s.update("delete network "+model.Short(id), func(tx *bolt.Tx) error {
		if err := deletePrefix(tx.Bucket(bucketEndpoints), id+"/"); err != nil {
			return err
		}
		return tx.Bucket(bucketNetworks).Delete([]byte(id))
	})
}

// PutEndpoint creates or replaces an endpoint record.
func (s *Store) PutEndpoint(e Endpoint) error {
	return s.update("save endpoint "+model.Short(e.ID), func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketEndpoints), e.NetworkID+"/"+e.ID, e)
	})
}

// DeleteEndpoint removes an endpoint record; a missing one is not an error.
func (s *Store) DeleteEndpoint(networkID, id string) error {
	return s.update("delete endpoint "+model.Short(id), func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEndpoints).Delete([]byte(networkID + "/" + id))
	})
}

// PutPool creates or replaces a pool record (not its allocations).
func (s *Store) PutPool(p Pool) error {
	p.Addrs, p.Owners = nil, nil
	return s.update("save pool "+p.ID, func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketPools), p.ID, p)
	})
}

// DeletePool removes a pool and all its allocations.
func (s *Store) DeletePool(id string) error {
	return s.update("delete pool "+id, func(tx *bolt.Tx) error {
		if err := deletePrefix(tx.Bucket(bucketAddrs), id+"|"); err != nil {
			return err
		}
		return tx.Bucket(bucketPools).Delete([]byte(id))
	})
}

// AddAddress records an allocation with its owner (may be empty) and, when
// cursor is non-empty, the pool's new round-robin cursor, in one
// transaction.
func (s *Store) AddAddress(poolID, addr, owner, cursor string) error {
	return s.update("save address "+addr, func(tx *bolt.Tx) error {
		pools := tx.Bucket(bucketPools)
		raw := pools.Get([]byte(poolID))
		if raw == nil {
			return fmt.Errorf("pool %s is not in the state", poolID)
		}
		if cursor != "" {
			var p Pool
			if err := json.Unmarshal(raw, &p); err != nil {
				return fmt.Errorf("decode pool %s: %w", poolID, err)
			}
			p.Cursor = cursor
			if err := putJSON(pools, poolID, p); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketAddrs).Put([]byte(poolID+"|"+addr), []byte(owner))
	})
}

// RemoveAddress deletes an allocation; a missing one is not an error.
func (s *Store) RemoveAddress(poolID, addr string) error {
	return s.update("delete address "+addr, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAddrs).Delete([]byte(poolID + "|" + addr))
	})
}

func (s *Store) update(what string, fn func(*bolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("%s in state %s: %w", what, s.path, ErrClosed)
	}
	s.writes <- w
	s.mu.RUnlock()
	if err := <-w.done; err != nil {
		return fmt.Errorf("%s in state %s: %w", what, s.path, err)
	}
	return nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put([]byte(key), raw)
}

func deletePrefix(b *bolt.Bucket, prefix string) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && strings.HasPrefix(string(k), prefix); k, _ = c.Next() {
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
