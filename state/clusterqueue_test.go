package state

import (
	"net/netip"
	"reflect"
	"testing"
)

// The queue keeps its order across a reopen, and a done entry goes.
func TestClusterQueue(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []ClusterDelete{
		{Op: OpRelease, Network: "appnet", Host: "a", Addr: netip.MustParseAddr("10.77.0.2")},
		{Op: OpRelease, Network: "appnet", Host: "a", Addr: netip.MustParseAddr("10.77.0.3")},
		{Op: OpLeave, Network: "appnet", Host: "a"},
	}
	for i := range want {
		if want[i].Seq, err = s.QueueClusterDelete(want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.QueueClusterDelete(ClusterDelete{Op: "drop", Network: "appnet"}); err == nil {
		t.Error("an unknown operation was queued")
	}
	must(t, s.Close())
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.ClusterDeletes()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("queue after reopen:\n got %+v\nwant %+v", got, want)
	}
	must(t, s.DoneClusterDelete(want[0].Seq))
	must(t, s.DoneClusterDelete(want[0].Seq)) // again: no error
	if got, err = s.ClusterDeletes(); err != nil || !reflect.DeepEqual(got, want[1:]) {
		t.Fatalf("queue after done: %+v, %v; want %+v", got, err, want[1:])
	}
}

// A cluster network's name and VNI survive a reopen; a bad VNI fails the
// load naming the record.
func TestClusterNetworkFields(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := Network{ID: nid, Bridge: "mn-111111111111", MTU: 1450, Cluster: "appnet", VNI: 4096}
	must(t, s.PutNetwork(n))
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Networks[0]; got.Cluster != "appnet" || got.VNI != 4096 {
		t.Fatalf("loaded %+v", got)
	}
	n.VNI = 0
	must(t, s.PutNetwork(n))
	if _, err := s.Load(); err == nil {
		t.Fatal("a cluster network without a VNI loaded")
	}
}
