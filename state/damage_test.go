package state

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// putRaw writes raw bytes under bucket/key of a closed state file, as a
// damaged disk or a careless edit would leave them.
func putRaw(t *testing.T, path, bucket, key string, value []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	must(t, err)
	defer db.Close()
	must(t, db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		if value == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), value)
	}))
}

// goodState writes a network with an endpoint and its pool, and returns
// the file's path.
func goodState(t *testing.T, dir string) string {
	t.Helper()
	s, err := Open(dir)
	must(t, err)
	must(t, s.PutNetwork(Network{ID: nid, Bridge: "mn-111111111111", IPv4: []Subnet{{Pool: "10.0.0.0/24", Gateway: "10.0.0.1/24"}}}))
	must(t, s.PutEndpoint(Endpoint{NetworkID: nid, ID: eid, HostVeth: "mnv222222222222", ContainerVeth: "mnc222222222222", MAC: "02:42:0a:00:00:02", IPv4: "10.0.0.2/24"}))
	must(t, s.PutPool(Pool{ID: "p1", Pool: "10.0.0.0/24", Gateway: "10.0.0.1/24"}))
	must(t, s.AddAddress("p1", "10.0.0.1", "", ""))
	must(t, s.AddAddress("p1", "10.0.0.2", "02:42:0a:00:00:02", "10.0.0.2"))
	must(t, s.Close())
	return filepath.Join(dir, FileName)
}

// TestUnusableRecords: a record that does not decode or does not validate
// fails the whole load, naming the file and the record, instead of
// restoring the rest.
func TestUnusableRecords(t *testing.T) {
	ep := `{"NetworkID":"` + nid + `","ID":"` + eid + `","HostVeth":"mnv222222222222","ContainerVeth":"mnc222222222222",`
	for _, tc := range []struct {
		name, bucket, key, value string
	}{
		{"network not json", "networks", nid, `{not json`},
		{"network bridge name", "networks", nid, `{"ID":"` + nid + `","Bridge":"a/b"}`},
		{"network subnet", "networks", nid, `{"ID":"` + nid + `","Bridge":"mn-1","IPv4":[{"Pool":"10.0.0.0/33"}]}`},
		{"network gateway", "networks", nid, `{"ID":"` + nid + `","Bridge":"mn-1","IPv4":[{"Pool":"10.0.0.0/24","Gateway":"nope"}]}`},
		{"network ID", "networks", nid, `{"ID":"other","Bridge":"mn-1"}`},
		{"endpoint not json", "endpoints", nid + "/" + eid, `[1,2`},
		{"endpoint MAC", "endpoints", nid + "/" + eid, ep + `"MAC":"02:42:zz:00:00:02"}`},
		{"endpoint address", "endpoints", nid + "/" + eid, ep + `"IPv4":"10.0.0.300/24"}`},
		{"endpoint veth", "endpoints", nid + "/" + eid, ep[:len(ep)-len(`"ContainerVeth":"mnc222222222222",`)] + `"ContainerVeth":"a-name-much-too-long"}`},
		{"endpoint port", "endpoints", nid + "/" + eid, ep + `"Ports":[{"Proto":"tcp","HostPort":80,"ContainerIP":"x","Port":80}]}`},
		{"pool garbage", "pools", "p1", `{"ID":"p1","Pool":"garbage"}`},
		{"pool range", "pools", "p1", `{"ID":"p1","Pool":"10.0.0.0/24","Range":"10.1.0.0/25"}`},
		{"address", "addrs", "p1|10.0.0.x", ``},
		{"address outside pool", "addrs", "p1|10.9.0.7", ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := goodState(t, dir)
			putRaw(t, path, tc.bucket, tc.key, []byte(tc.value))
			s, err := Open(dir)
			must(t, err)
			defer s.Close()
			snap, err := s.Load()
			if err == nil {
				t.Fatalf("Load succeeded: %+v", snap)
			}
			if !errors.Is(err, ErrUnusable) {
				t.Errorf("error %v does not wrap ErrUnusable", err)
			}
			for _, want := range []string{path, "record " + tc.bucket + "/" + tc.key, "Recovering the state"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if len(snap.Networks)+len(snap.Endpoints)+len(snap.Pools) != 0 {
				t.Errorf("a failed load returned part of the state: %+v", snap)
			}
		})
	}
}

// TestMissingSchema: a file with data but no schema version is refused,
// not initialised as a new state over the data.
func TestMissingSchema(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"no meta bucket, endpoints only", func(t *testing.T, path string) {
			putRaw(t, path, "endpoints", nid+"/"+eid, []byte(`{}`))
		}},
		{"no meta bucket, pools only", func(t *testing.T, path string) {
			putRaw(t, path, "pools", "p1", []byte(`{}`))
		}},
		{"no schema key", func(t *testing.T, path string) {
			goodState(t, filepath.Dir(path))
			putRaw(t, path, "meta", "schema", nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			tc.setup(t, path)
			s, err := Open(dir)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v: want ErrUnusable naming %s", err, path)
			}
		})
	}
}

// TestGeneration: a new or zero-length file gets a new generation and
// reports itself created; a file of the previous release (no generation)
// gets one and reports the tag upgrade until it is done.
func TestGeneration(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	must(t, err)
	gen := s.Generation()
	if !s.Created() || s.Upgraded() || !validGeneration(gen) {
		t.Fatalf("new file: created %v upgraded %v generation %q", s.Created(), s.Upgraded(), gen)
	}
	must(t, s.Close())
	s, err = Open(dir) // a start that refused: still new
	must(t, err)
	if !s.Created() || s.Generation() != gen {
		t.Fatalf("reopened before Claimed: created %v generation %q, want %q", s.Created(), s.Generation(), gen)
	}
	must(t, s.Claimed())
	must(t, s.Close())
	s, err = Open(dir)
	must(t, err)
	if s.Created() || s.Upgraded() || s.Generation() != gen {
		t.Fatalf("reopened: created %v upgraded %v generation %q, want %q", s.Created(), s.Upgraded(), s.Generation(), gen)
	}
	must(t, s.Close())

	path := filepath.Join(dir, FileName)
	must(t, os.Truncate(path, 0))
	s, err = Open(dir)
	must(t, err)
	if !s.Created() || s.Generation() == gen {
		t.Fatalf("zero-length file: created %v generation %q (was %q)", s.Created(), s.Generation(), gen)
	}
	must(t, s.Close())

	dir = t.TempDir()
	path = goodState(t, dir)
	putRaw(t, path, "meta", "generation", nil) // as the previous release wrote it
	putRaw(t, path, "meta", "unclaimed", nil)
	s, err = Open(dir)
	must(t, err)
	gen = s.Generation()
	if s.Created() || !s.Upgraded() || !validGeneration(gen) {
		t.Fatalf("legacy file: created %v upgraded %v generation %q", s.Created(), s.Upgraded(), gen)
	}
	must(t, s.Close())
	s, err = Open(dir) // a crash before the retag finished: still to do
	must(t, err)
	if !s.Upgraded() || s.Generation() != gen {
		t.Fatalf("legacy file reopened: upgraded %v generation %q, want %q", s.Upgraded(), s.Generation(), gen)
	}
	must(t, s.Claimed())
	must(t, s.Close())
	s, err = Open(dir)
	must(t, err)
	defer s.Close()
	if s.Upgraded() || s.Generation() != gen {
		t.Fatalf("after the upgrade: upgraded %v generation %q, want %q", s.Upgraded(), s.Generation(), gen)
	}
}

// growState adds enough records that the tree has branch pages.
func growState(t *testing.T, dir string) string {
	t.Helper()
	path := goodState(t, dir)
	s, err := Open(dir)
	must(t, err)
	for i := range 300 {
		e := Endpoint{NetworkID: nid, ID: strings.Repeat("3", 60) + string(rune('a'+i/26%26)) + string(rune('a'+i%26)) + "00", HostVeth: "mnv333333333333", IPv4: "10.0.0.3/24"}
		must(t, s.PutEndpoint(e))
	}
	must(t, s.Close())
	return path
}

func pageSize(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	m := readMeta(b)
	if m.err != nil {
		t.Fatal(m.err)
	}
	return int64(m.pageSize)
}

func overwritePage(t *testing.T, path string, page int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	size := pageSize(t, path)
	_, err = f.WriteAt(bytes.Repeat([]byte{0xa5}, int(size)), page*size)
	must(t, err)
}

// TestCorruptedPages: bbolt panics on a page that is not what the tree
// expects; Open or Load must return ErrUnusable instead.
func TestCorruptedPages(t *testing.T) {
	for page := int64(2); page < 4; page++ { // the freelist and the root leaf of a small file
		t.Run("page"+string(rune('0'+page)), func(t *testing.T) {
			dir := t.TempDir()
			path := growState(t, dir)
			overwritePage(t, path, page)
			s, err := Open(dir)
			if err == nil {
				_, err = s.Load()
				s.Close()
			}
			if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v: want ErrUnusable naming %s", err, path)
			}
			t.Log(err)
		})
	}
}

// TestMetaRollbackWarns: bbolt silently falls back to the older meta page
// when the newer one is damaged, losing the last transaction; Open says so.
// Damage to the older page loses nothing, and Open says that instead.
func TestMetaRollbackWarns(t *testing.T) {
	for _, tc := range []struct {
		name  string
		newer bool
		want  string
	}{
		{"newer page", true, "may be lost"},
		{"older page", false, "nothing is lost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := goodState(t, dir)
			s, err := Open(dir)
			must(t, err)
			if w := s.Warning(); w != "" {
				t.Fatalf("warning on an intact file: %s", w)
			}
			must(t, s.Close()) // Open commits a transaction: read the pages after it
			b, err := os.ReadFile(path)
			must(t, err)
			size := pageSize(t, path)
			m0, m1 := readMeta(b), readMeta(b[size:])
			page := int64(0)
			if (m1.txid > m0.txid) == tc.newer {
				page = 1
			}

			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, page*size+metaTxid-8) // the high-water mark: checksummed, not the txid
			must(t, err)
			must(t, f.Close())
			s, err = Open(dir)
			must(t, err)
			defer s.Close()
			if w := s.Warning(); !strings.Contains(w, "meta page") || !strings.Contains(w, tc.want) {
				t.Fatalf("warning = %q, want one about the meta page saying %q", w, tc.want)
			}
			if _, err := s.Load(); err != nil {
				t.Fatalf("the other meta page is consistent, yet Load failed: %v", err)
			}
		})
	}
}
