package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Load reads everything. A record that does not decode or validate, or a
// corrupted page, fails the whole load with an error wrapping ErrUnusable
// that names the record: a partial state must never be served.
func (s *Store) Load() (snap Snapshot, err error) {
	defer recoverPanic(s.path, &err)
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := loadAll(tx, bucketNetworks, &snap.Networks, (*Network).validate); err != nil {
			return err
		}
		if err := loadAll(tx, bucketEndpoints, &snap.Endpoints, (*Endpoint).validate); err != nil {
			return err
		}
		if err := loadAll(tx, bucketPools, &snap.Pools, (*Pool).validate); err != nil {
			return err
		}
		byID := map[string]*Pool{}
		for i := range snap.Pools {
			byID[snap.Pools[i].ID] = &snap.Pools[i]
		}
		return tx.Bucket(bucketAddrs).ForEach(func(k, v []byte) error {
			id, addr, _ := strings.Cut(string(k), "|")
			p := byID[id]
			if p == nil {
				return nil // its pool went in the same transaction; nothing refers to it
			}
			if err := validateAddr(p, addr); err != nil {
				return recordError(bucketAddrs, k, err)
			}
			p.Addrs = append(p.Addrs, addr)
			if len(v) > 0 {
				if p.Owners == nil {
					p.Owners = map[string]string{}
				}
				p.Owners[addr] = string(v)
			}
			return nil
		})
	})
	if errors.Is(err, ErrUnusable) {
		return Snapshot{}, err
	}
	if err != nil {
		return Snapshot{}, unusable(s.path, "%v", err)
	}
	return snap, nil
}

// recordError is the error for one bad record; unusable adds the file.
func recordError(bucket, key []byte, err error) error {
	return fmt.Errorf("record %s/%s: %w", bucket, key, err)
}

func loadAll[T any](tx *bolt.Tx, bucket []byte, out *[]T, validate func(*T, string) error) error {
	return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		var rec T
		if err := json.Unmarshal(v, &rec); err != nil {
			return recordError(bucket, k, fmt.Errorf("does not decode: %w", err))
		}
		if err := validate(&rec, string(k)); err != nil {
			return recordError(bucket, k, fmt.Errorf("invalid: %w", err))
		}
		*out = append(*out, rec)
		return nil
	})
}

// Peek is what a reader without the daemon learns from the file: its
// generation, whether it is still unclaimed (see Created), and its records.
type Peek struct {
	Generation string
	Created    bool
	Snapshot   Snapshot
}

// ReadOnly reads the state in dir without changing it, for `mynet doctor`
// while the daemon is down (a running daemon holds the file locked: the
// error then wraps ErrLocked). A missing file is os.ErrNotExist; a damaged
// one wraps ErrUnusable, like Open and Load.
func ReadOnly(dir string) (p Peek, err error) {
	path := filepath.Join(dir, FileName)
	fi, err := os.Stat(path)
	if err != nil {
		return p, err
	}
	if fi.Size() == 0 {
		p.Created = true // what Open makes of it
		return p, nil
	}
	defer recoverPanic(path, &err)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
	if errors.Is(err, berrors.ErrTimeout) {
		return p, fmt.Errorf("%w: %s is locked", ErrLocked, path)
	}
	if err != nil {
		return p, unusable(path, "bbolt cannot open it: %v", err)
	}
	defer db.Close()
	s := &Store{db: db, path: path}
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			p.Created = true
			return nil
		}
		p.Generation, p.Created = string(meta.Get(keyGeneration)), meta.Get(keyUnclaimed) != nil
		for _, b := range [][]byte{bucketNetworks, bucketEndpoints, bucketPools, bucketAddrs} {
			if tx.Bucket(b) == nil {
				return unusable(path, "bucket %s is missing", b)
			}
		}
		return nil
	})
	if err != nil || p.Created && p.Generation == "" {
		return p, err
	}
	p.Snapshot, err = s.Load()
	return p, err
}
