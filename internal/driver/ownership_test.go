package driver

import (
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// fakeKernel is the tagged links and rules ClaimObjects sees, and what it
// did to them.
type fakeKernel struct {
	links []model.TaggedLink
	rules bool
	gen   string // what Retag gives

	removed []string
}

func (k *fakeKernel) TaggedLinks() ([]model.TaggedLink, error) { return slices.Clone(k.links), nil }
func (k *fakeKernel) HasRules() (bool, error)                  { return k.rules, nil }

func (k *fakeKernel) Retag(name string, old model.Tag) error {
	for i, l := range k.links {
		if l.Name == name && l.Tag == old {
			k.links[i].Tag.Generation = k.gen
		}
	}
	return nil
}

func (k *fakeKernel) RemoveTagged(name string, t model.Tag) error {
	k.links = slices.DeleteFunc(k.links, func(l model.TaggedLink) bool { return l.Name == name && l.Tag == t })
	k.removed = append(k.removed, name)
	return nil
}

// TestClaimObjects: the startup deletes orphans only when the state
// proves they are its own; otherwise it refuses with an error wrapping
// state.ErrUnusable (the daemon exits 78 on it), unless --discard-orphans.
func TestClaimObjects(t *testing.T) {
	const (
		inst  = "mynet"
		known = "aaaa000000000000000000000000000000000000000000000000000000000000"
		other = "bbbb000000000000000000000000000000000000000000000000000000000000"
	)
	link := func(name, gen, kind, id string) model.TaggedLink {
		return model.TaggedLink{Name: name, Tag: model.Tag{Instance: inst, Generation: gen, Kind: kind, ID: id}}
	}
	for _, tc := range []struct {
		name string
		// file: "new", "existing" (one network, known), "legacy" (the
		// previous release's file with that network)
		file      string
		links     func(gen string) []model.TaggedLink
		rules     bool
		discard   bool
		refuse    string   // part of the error, "" to start
		wantLinks []string // name@generation-is-ours after the call
		removed   []string
	}{
		{name: "new state, nothing in the kernel", file: "new", links: func(string) []model.TaggedLink { return nil }},
		{name: "new state, tagged links", file: "new", links: func(string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", "0badc0de", "net", known)}
		}, refuse: "mn-aaaa (network aaaa00000000, generation 0badc0de)", wantLinks: []string{"mn-aaaa@foreign"}},
		{name: "new state, rules only", file: "new", links: func(string) []model.TaggedLink { return nil }, rules: true,
			refuse: "rules in this instance's chains"},
		{name: "new state, --discard-orphans", file: "new", discard: true, rules: true, links: func(string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", "0badc0de", "net", known)}
		}, removed: []string{"mn-aaaa"}},
		{name: "own generation, orphans left to the reconcile", file: "existing", rules: true, links: func(gen string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", gen, "net", known), link("mn-bbbb", gen, "net", other)}
		}, wantLinks: []string{"mn-aaaa@ours", "mn-bbbb@ours"}},
		{name: "foreign generation", file: "existing", links: func(gen string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", gen, "net", known), link("mnvbbbb", "0badc0de", "ep", other)}
		}, refuse: "mnvbbbb (endpoint bbbb00000000, generation 0badc0de)", wantLinks: []string{"mn-aaaa@ours", "mnvbbbb@foreign"}},
		{name: "foreign generation, --discard-orphans", file: "existing", discard: true, links: func(gen string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", "0badc0de", "net", known), link("mnvbbbb", "0badc0de", "ep", other)}
		}, wantLinks: []string{"mn-aaaa@ours"}, removed: []string{"mnvbbbb"}},
		{name: "old tags on an existing state", file: "existing", links: func(string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", "", "net", known)}
		}, refuse: "an earlier release's tag", wantLinks: []string{"mn-aaaa@foreign"}},
		{name: "upgrade from the previous release", file: "legacy", links: func(string) []model.TaggedLink {
			return []model.TaggedLink{link("mn-aaaa", "", "net", known), link("mn-bbbb", "", "net", other)}
		}, wantLinks: []string{"mn-aaaa@ours", "mn-bbbb@ours"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			store := openFile(t, dir, tc.file, known)
			defer store.Close()
			snap, err := store.Load()
			if err != nil {
				t.Fatal(err)
			}
			k := &fakeKernel{links: tc.links(store.Generation()), rules: tc.rules, gen: store.Generation()}
			err = ClaimObjects(slog.New(slog.DiscardHandler), store, snap, k, tc.discard)
			switch {
			case tc.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refuse != "" && (!errors.Is(err, state.ErrUnusable) || !strings.Contains(err.Error(), tc.refuse) || !strings.Contains(err.Error(), "--discard-orphans")):
				t.Fatalf("error %v: want state.ErrUnusable naming %q and --discard-orphans", err, tc.refuse)
			}
			var got []string
			for _, l := range k.links {
				whose := "foreign"
				if l.Tag.Generation == store.Generation() {
					whose = "ours"
				}
				got = append(got, l.Name+"@"+whose)
			}
			if !slices.Equal(got, tc.wantLinks) || !slices.Equal(k.removed, tc.removed) {
				t.Errorf("links %v, removed %v; want %v, %v", got, k.removed, tc.wantLinks, tc.removed)
			}
			// A start that went through claimed the file; a refused one
			// leaves it as it was, to be checked again.
			if claimed := !store.Created() && !store.Upgraded(); tc.file != "existing" && claimed != (err == nil) {
				t.Errorf("claimed %v after error %v", claimed, err)
			}
		})
	}
}

func openFile(t *testing.T, dir, kind, network string) *state.Store {
	t.Helper()
	s, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if kind == "new" {
		return s
	}
	if err := s.PutNetwork(state.Network{ID: network, Bridge: "mn-aaaa"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Claimed(); err != nil {
		t.Fatal(err)
	}
	if kind == "legacy" {
		// The previous release wrote no generation.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		dropGeneration(t, dir)
		if s, err = state.Open(dir); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// dropGeneration makes a closed state file look like the previous
// release's: no generation key.
func dropGeneration(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, state.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("generation")) }); err != nil {
		t.Fatal(err)
	}
}
