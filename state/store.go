package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

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
	if errors.Is(err, berrors.ErrTimeout) {
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
	if err != nil && !errors.Is(err, berrors.ErrTimeout) {
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
