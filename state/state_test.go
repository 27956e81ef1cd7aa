package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

const (
	nid = "1111111111111111111111111111111111111111111111111111111111111111"
	eid = "2222222222222222222222222222222222222222222222222222222222222222"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	must(t, s.PutNetwork(Network{ID: nid, Bridge: "mn-111111111111", MTU: 1400, IPv4: []Subnet{{Pool: "10.0.0.0/24", Gateway: "10.0.0.1/24"}}}))
	must(t, s.PutEndpoint(Endpoint{NetworkID: nid, ID: eid, HostVeth: "mnv222222222222", IPv4: "10.0.0.2/24"}))
	must(t, s.PutPool(Pool{ID: "10.0.0.0/24", Pool: "10.0.0.0/24"}))
	must(t, s.AddAddress("10.0.0.0/24", "10.0.0.1", "", ""))
	must(t, s.AddAddress("10.0.0.0/24", "10.0.0.2", "02:00:00:00:00:02", "10.0.0.2"))
	must(t, s.Close())

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Networks) != 1 || snap.Networks[0].MTU != 1400 || snap.Networks[0].IPv4[0].Gateway != "10.0.0.1/24" {
		t.Fatalf("networks = %+v", snap.Networks)
	}
	if len(snap.Endpoints) != 1 || snap.Endpoints[0].HostVeth != "mnv222222222222" {
		t.Fatalf("endpoints = %+v", snap.Endpoints)
	}
	if len(snap.Pools) != 1 || snap.Pools[0].Cursor != "10.0.0.2" || strings.Join(snap.Pools[0].Addrs, ",") != "10.0.0.1,10.0.0.2" || snap.Pools[0].Owners["10.0.0.2"] != "02:00:00:00:00:02" {
		t.Fatalf("pools = %+v", snap.Pools)
	}

	// Deletes cascade and tolerate absence.
	must(t, s.DeleteNetwork(nid))
	must(t, s.DeleteNetwork(nid))
	must(t, s.DeleteEndpoint(nid, eid))
	must(t, s.RemoveAddress("10.0.0.0/24", "10.0.0.9"))
	must(t, s.DeletePool("10.0.0.0/24"))
	snap, _ = s.Load()
	if len(snap.Networks)+len(snap.Endpoints)+len(snap.Pools) != 0 {
		t.Fatalf("state not empty after deletes: %+v", snap)
	}
	if err := s.AddAddress("nope", "10.0.0.3", "", ""); err == nil {
		t.Fatal("AddAddress to an unknown pool succeeded")
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  string
	}{
		{"garbage", func(t *testing.T, path string) {
			must(t, os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 512)), 0o600))
		}, "Recovering the state"},
		{"truncated", func(t *testing.T, path string) {
			s, err := Open(filepath.Dir(path))
			must(t, err)
			must(t, s.Close())
			must(t, os.Truncate(path, 100))
		}, "Recovering the state"},
		{"wrong schema", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			must(t, err)
			must(t, db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(bucketMeta)
				if err != nil {
					return err
				}
				return b.Put(keySchema, []byte("99"))
			}))
			must(t, db.Close())
		}, `schema version "99"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, filepath.Join(dir, FileName))
			s, err := Open(dir)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a bad file")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentWrites: writes from many goroutines at once are grouped
// into shared transactions, yet each is committed, in order per caller,
// and a write that fails fails alone.
func TestConcurrentWrites(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	must(t, s.PutPool(Pool{ID: "10.0.0.0/16", Pool: "10.0.0.0/16"}))
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 100 {
		wg.Go(func() {
			addr := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
			errs <- s.AddAddress("10.0.0.0/16", addr, "", "")
			if i%2 == 0 {
				errs <- s.RemoveAddress("10.0.0.0/16", addr)
			}
			if i%10 == 0 { // fails: no such pool
				if err := s.AddAddress("10.9.0.0/16", addr, "", ""); err == nil {
					errs <- fmt.Errorf("address in a missing pool saved")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	must(t, s.Close())
	if err := s.PutPool(Pool{ID: "x", Pool: "10.1.0.0/16"}); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close = %v, want ErrClosed", err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pools) != 1 || len(snap.Pools[0].Addrs) != 50 {
		t.Fatalf("after 100 adds and 50 removes: %d pools, %d addresses", len(snap.Pools), len(snap.Pools[0].Addrs))
	}
}
