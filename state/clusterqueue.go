package state

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"

	bolt "go.etcd.io/bbolt"
)

// The cluster delete queue. A delete the engine asks for is final (it never
// retries one), so when the cluster store cannot be reached the delete is
// made locally and its store half waits here, in the order it was asked
// for, until the store answers again; a restart keeps the queue.

// Cluster delete operations.
const (
	// OpRelease releases an address claim (cluster.Store.ReleaseAddress).
	OpRelease = "release"
	// OpLeave takes the host out of a cluster network
	// (cluster.Store.LeaveNetwork).
	OpLeave = "leave"
)

// ClusterDelete is one queued store delete. Seq orders the queue; it is
// set by QueueClusterDelete and ClusterDeletes.
type ClusterDelete struct {
	Seq     uint64     `json:"-"`
	Op      string     `json:"op"`
	Network string     `json:"network"` // the cluster network's name
	Host    string     `json:"host"`
	Addr    netip.Addr `json:"addr,omitzero"` // OpRelease only
}

// QueueClusterDelete appends a delete to the queue and returns its Seq.
func (s *Store) QueueClusterDelete(d ClusterDelete) (uint64, error) {
	if d.Op != OpRelease && d.Op != OpLeave {
		return 0, fmt.Errorf("queue cluster delete: unknown operation %q", d.Op)
	}
	var seq uint64
	err := s.update("queue cluster "+d.Op+" of network "+d.Network, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketClusterQueue)
		if err != nil {
			return err
		}
		if seq, err = b.NextSequence(); err != nil {
			return err
		}
		return putJSON(b, string(seqKey(seq)), d)
	})
	return seq, err
}

// ClusterDeletes returns the queue, oldest first.
func (s *Store) ClusterDeletes() (out []ClusterDelete, err error) {
	defer recoverPanic(s.path, &err)
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketClusterQueue)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return recordError(bucketClusterQueue, k, fmt.Errorf("key is not a sequence number"))
			}
			var d ClusterDelete
			if err := json.Unmarshal(v, &d); err != nil {
				return recordError(bucketClusterQueue, k, err)
			}
			d.Seq = binary.BigEndian.Uint64(k)
			out = append(out, d)
			return nil
		})
	})
	return out, err
}

// DoneClusterDelete removes a delete from the queue; a missing one is not
// an error.
func (s *Store) DoneClusterDelete(seq uint64) error {
	return s.update(fmt.Sprintf("dequeue cluster delete %d", seq), func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketClusterQueue)
		if b == nil {
			return nil
		}
		return b.Delete(seqKey(seq))
	})
}

// seqKey is a sequence number as a key that sorts in numeric order.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}
