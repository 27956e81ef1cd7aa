// Package state persists mynet's networks, endpoints, IPAM pools and address
// allocations in one bbolt file, one transaction per plugin operation.
//
// The engine never replays CreateNetwork or Join to a remote plugin after a
// restart (protocol.md section 5), so this file is the only memory mynet has
// of what it built. The package knows nothing about kernel objects: records
// are plain data, and reconciling them with the kernel is the caller's job.
package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mynet/mynet/internal/model"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is written on creation and checked on every open.
const SchemaVersion = 1

// FileName is the database's name inside the state directory.
const FileName = "mynet.db"

var (
	bucketMeta      = []byte("meta")
	bucketNetworks  = []byte("networks")
	bucketEndpoints = []byte("endpoints") // key: networkID "/" endpointID
	bucketPools     = []byte("pools")
	bucketAddrs     = []byte("addrs") // key: poolID "|" address
	keySchema       = []byte("schema")
	// keyGeneration is a random ID created with the file; mynet puts it in
	// the tags of the links it creates, so that it can tell its own
	// leftovers from the objects of another state file (one lost, moved
	// aside or replaced), which it must never delete as orphans.
	keyGeneration = []byte("generation")
	// keyLegacyTags marks a file of an earlier release, which had no
	// generation: its links carry the old tag until the caller has
	// retagged them (see Upgraded).
	keyLegacyTags = []byte("legacy-tags")
	// keyUnclaimed marks a file created while tagged objects in the
	// kernel had not yet been checked against it, so that a start that
	// refuses still sees the file as new the next time (see Created).
	keyUnclaimed = []byte("unclaimed")
)

// ErrLocked means another process holds the database.
var ErrLocked = errors.New("state directory is in use by another mynet process")

// Network is a network as mynet created it.
type Network struct {
	ID     string
	Bridge string
	MTU    int      `json:",omitempty"`
	IPv4   []Subnet `json:",omitempty"`
	IPv6   []Subnet `json:",omitempty"`
	// ICC and Masquerade are Docker's enable_icc and enable_ip_masquerade.
	ICC        bool
	Masquerade bool
	Internal   bool `json:",omitempty"`
	// AntiSpoofing is the anti-spoofing filter (mynet.anti_spoofing). In
	// JSON it is the inverse "SpoofingAllowed", so that the zero value of
	// a record written before the option existed protects (see
	// network_json.go).
	AntiSpoofing bool `json:"-"`
	// HostBinding is the default host address of published ports.
	HostBinding string `json:",omitempty"`
	// Pending marks a record written before its kernel objects: if mynet
	// dies before clearing it, the startup reconcile removes the objects the
	// record names, and the engine's retry (if any) creates them afresh.
	Pending bool `json:",omitempty"`
	Created time.Time
}

// Subnet is one entry of the engine's IPv4Data or IPv6Data.
type Subnet struct {
	Pool    string // CIDR
	Gateway string `json:",omitempty"` // address with the pool's prefix length
}

// Endpoint is a container attachment: a veth pair on the network's bridge.
type Endpoint struct {
	NetworkID     string
	ID            string
	HostVeth      string
	ContainerVeth string
	MAC           string
	IPv4          string `json:",omitempty"` // address/len
	IPv6          string `json:",omitempty"`
	// Ports are the published ports, host ports resolved, while the
	// endpoint is the container's gateway endpoint.
	Ports []Port `json:",omitempty"`
	// MACGenerated: mynet chose the MAC (the engine sent none), so a
	// repeated CreateEndpoint must return it again.
	MACGenerated bool `json:",omitempty"`
	Pending      bool `json:",omitempty"`
	Created      time.Time
}

// Port is one published port mapping as programmed.
type Port struct {
	Proto       string // tcp, udp, sctp
	HostIP      string `json:",omitempty"`
	HostPort    uint16
	HostPortEnd uint16
	ContainerIP string
	Port        uint16
}

// Pool is an IPAM pool. Its allocations are stored as separate keys so that
// one allocation is one small write, not a rewrite of the whole pool.
type Pool struct {
	ID     string
	Pool   string
	Range  string `json:",omitempty"`
	V6     bool   `json:",omitempty"`
	Cursor string `json:",omitempty"` // last address handed out, for round-robin after restarts
	// Gateway is the address handed out for the gateway request, so that a
	// repeated request gets the same answer.
	Gateway string `json:",omitempty"`
	Created time.Time
	// NetworkID is the network that uses the pool, once CreateNetwork
	// names it; empty while the engine is still creating the network.
	NetworkID string `json:",omitempty"`
	// Addrs and Owners are filled by Load; PutPool does not store them
	// (each allocation is a key of its own). Owners maps an address to the
	// MAC of the endpoint it was allocated for, when the engine sent one.
	// Addrs is in the JSON for the daemon's state dump.
	Addrs  []string          `json:",omitempty"`
	Owners map[string]string `json:"-"`
}

// Snapshot is the whole state: as loaded at startup, and as the daemon
// shows it to clients (Mynet.State).
type Snapshot struct {
	Networks  []Network
	Endpoints []Endpoint
	Pools     []Pool

	// Generation is in the tags of the links of this state (model.Tag);
	// set in the daemon's dump, not by Load.
	Generation string `json:",omitempty"`
}

// Store is the bbolt-backed state. Its methods are safe for concurrent use.
//
// Writes go through one committer goroutine that commits whatever
// accumulated while the previous commit was syncing in a single
// transaction: alone, a write costs the same two fsyncs as before; when
// the engine starts 50 containers at once, their writes share them.
// Unlike bolt.DB.Batch there is no delay to wait for company.
type Store struct {
	db   *bolt.DB
	path string

	generation string
	created    bool   // new or emptied, and not yet Claimed
	upgraded   bool   // had no generation, and not yet Claimed
	warning    string // a meta page rollback bbolt recovered from

	mu      sync.RWMutex // closed, and sends on writes
	closed  bool
	writes  chan *write
	stopped chan struct{}
}

type write struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// maxGroup bounds one transaction, so that a burst does not make the first
// writer wait for a very long commit.
const maxGroup = 64

// Open opens (creating if needed) the database in dir. It fails fast when
// another process holds the file, and refuses a file of another schema
// version rather than guessing at its contents. A damaged file (one bbolt
// rejects or panics on, or a non-empty one without a schema version) is an
// error wrapping ErrUnusable.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	warning := checkMetaPages(path)
	db, err := openBolt(path)
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is locked; stop the other instance or pass another --state-dir", ErrLocked, path)
	}
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, warning: warning, writes: make(chan *write), stopped: make(chan struct{})}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.check(); err != nil {
		db.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

func openBolt(path string) (db *bolt.DB, err error) {
	defer recoverPanic(path, &err)
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 200 * time.Millisecond, FreelistType: bolt.FreelistMapType})
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		return nil, unusable(path, "bbolt cannot open it: %v", err)
	}
	return db, err
}

// committer runs the writes, in the order they arrived, grouping those
// that are waiting.
func (s *Store) committer() {
	defer close(s.stopped)
	for w := range s.writes {
		group := []*write{w}
	more:
		for len(group) < maxGroup {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break more
				}
				group = append(group, w)
			default:
				break more
			}
		}
		s.commit(group)
	}
}

// commit runs a group in one transaction. If one write fails, the
// transaction is rolled back and each write runs again in a transaction of
// its own, so that only the failing one fails; writes are pure functions
// of the transaction, so running one again is safe.
func (s *Store) commit(group []*write) {
	if len(group) > 1 {
		failed := false
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, w := range group {
				if err := w.fn(tx); err != nil {
					failed = true
					return err
				}
			}
			return nil
		})
		if !failed {
			for _, w := range group {
				w.done <- err // nil, or the commit's own failure for all
			}
			return
		}
	}
	for _, w := range group {
		w.done <- s.db.Update(w.fn)
	}
}

func (s *Store) init() (err error) {
	defer recoverPanic(s.path, &err)
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			var buckets []string
			if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				buckets = append(buckets, string(name))
				return nil
			}); err != nil {
				return err
			}
			if len(buckets) > 0 {
				return unusable(s.path, "it has data (buckets %s) but no meta bucket with the schema version", strings.Join(buckets, ", "))
			}
			// A new file, or an empty one (a zero-length file is
			// initialised by bbolt): the caller must not take the
			// tagged objects in the kernel for orphans of it.
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
				return err
			}
			if err := meta.Put(keyUnclaimed, []byte("1")); err != nil {
				return err
			}
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			return unusable(s.path, "record meta/%s (the schema version) is missing", keySchema)
		case string(v) != strconv.Itoa(SchemaVersion):
			return unusable(s.path, "it has schema version %q; this mynet reads version %d", v, SchemaVersion)
		}
		if g := meta.Get(keyGeneration); g != nil {
			if !validGeneration(string(g)) {
				return unusable(s.path, "record meta/%s is %q, not %d hex digits", keyGeneration, g, 2*generationBytes)
			}
			s.generation = string(g)
		} else {
			if s.generation, err = newGeneration(); err != nil {
				return err
			}
			if err := meta.Put(keyGeneration, []byte(s.generation)); err != nil {
				return err
			}
			if meta.Get(keyUnclaimed) == nil {
				// A file of the previous release: it decoded, so the
				// links tagged by this instance are its own.
				if err := meta.Put(keyLegacyTags, []byte("1")); err != nil {
					return err
				}
			}
		}
		s.created = meta.Get(keyUnclaimed) != nil
		s.upgraded = meta.Get(keyLegacyTags) != nil
		for _, b := range [][]byte{bucketNetworks, bucketEndpoints, bucketPools, bucketAddrs} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
}

// check runs bbolt's consistency check over every page: a corrupted page
// that Load would not visit (a free page, a branch of a deleted record)
// would otherwise make a later write panic in the committer, with no way
// to recover. It costs about 0.1 ms on a state of 58 networks and 300
// endpoints (a 370 KB file).
func (s *Store) check() (err error) {
	defer recoverPanic(s.path, &err)
	return s.db.View(func(tx *bolt.Tx) error {
		var problems []string
		for err := range tx.Check() {
			if len(problems) < 3 {
				problems = append(problems, err.Error())
			}
		}
		if len(problems) > 0 {
			return unusable(s.path, "bbolt's consistency check failed: %s", strings.Join(problems, "; "))
		}
		return nil
	})
}

// generationBytes is the size of the random generation ID.
const generationBytes = 4

func newGeneration() (string, error) {
	b := make([]byte, generationBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("create the state's generation ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func validGeneration(g string) bool {
	if len(g) != 2*generationBytes {
		return false
	}
	_, err := hex.DecodeString(g)
	return err == nil && strings.ToLower(g) == g
}

// Generation is the file's random ID, created with it: mynet's link tags
// carry it (see model.Tag).
func (s *Store) Generation() string { return s.generation }

// Created reports whether the file is new or was empty (a zero-length file
// is initialised as new) and Claimed was not called since. Tagged objects
// in the kernel then belong to a state that was lost, and must be neither
// adopted nor deleted.
func (s *Store) Created() bool { return s.created }

// Upgraded reports whether the file comes from a release without
// generations, so that its links may still carry the old tags, and
// Claimed was not called since.
func (s *Store) Upgraded() bool { return s.upgraded }

// Claimed records that the caller has checked the tagged objects in the
// kernel against this state (and retagged those of an upgraded file):
// from now on Created and Upgraded report false.
func (s *Store) Claimed() error {
	if !s.created && !s.upgraded {
		return nil
	}
	err := s.update("record the ownership check", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		return errors.Join(meta.Delete(keyUnclaimed), meta.Delete(keyLegacyTags))
	})
	if err == nil {
		s.created, s.upgraded = false, false
	}
	return err
}

// Warning is what Open noticed and recovered from (a damaged meta page,
// which makes bbolt fall back to the previous transaction), or "".
func (s *Store) Warning() string { return s.warning }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close waits for the writes in flight and releases the file lock.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.writes)
	}
	s.mu.Unlock()
	<-s.stopped
	return s.db.Close()
}

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("state store is closed")

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
	if errors.Is(err, bolt.ErrTimeout) {
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
