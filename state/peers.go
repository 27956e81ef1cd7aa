package state

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	bolt "go.etcd.io/bbolt"

	"github.com/mynet/mynet/internal/model"
)

// bucketPeers holds the local copy of each cluster network's remote
// endpoints (key: the cluster network's name), so that a restart with the
// cluster store down programs what was known. It is created on the first
// save: a state without cluster networks never has it, and older files
// open unchanged.
var bucketPeers = []byte("cluster-peers")

// peerJSON is a VXLANPeer as stored: the MAC as text.
type peerJSON struct {
	IP   netip.Addr `json:"ip"`
	MAC  string     `json:"mac"`
	VTEP netip.Addr `json:"vtep"`
}

// SavePeers replaces the local copy of a cluster network's peers.
func (s *Store) SavePeers(network string, peers []model.VXLANPeer) error {
	recs := make([]peerJSON, len(peers))
	for i, p := range peers {
		recs[i] = peerJSON{IP: p.IP, MAC: p.MAC.String(), VTEP: p.VTEP}
	}
	return s.update("save the peers of cluster network "+network, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPeers)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bucketPeers, err)
		}
		return putJSON(b, network, recs)
	})
}

// LoadPeers reads the local copy of a cluster network's peers; found is
// false when none was saved.
func (s *Store) LoadPeers(network string) (peers []model.VXLANPeer, found bool, err error) {
	defer recoverPanic(s.path, &err)
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPeers)
		if b == nil {
			return nil
		}
		raw := b.Get([]byte(network))
		if raw == nil {
			return nil
		}
		var recs []peerJSON
		if err := json.Unmarshal(raw, &recs); err != nil {
			return recordError(bucketPeers, []byte(network), fmt.Errorf("does not decode: %w", err))
		}
		for _, r := range recs {
			mac, err := net.ParseMAC(r.MAC)
			if err != nil {
				return recordError(bucketPeers, []byte(network), fmt.Errorf("peer %s: %w", r.IP, err))
			}
			peers = append(peers, model.VXLANPeer{IP: r.IP, MAC: mac, VTEP: r.VTEP})
		}
		found = true
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("load the peers of cluster network %s from state %s: %w", network, s.path, err)
	}
	return peers, found, nil
}

// DeletePeers forgets the local copy of a cluster network's peers; a
// missing one is no error.
func (s *Store) DeletePeers(network string) error {
	return s.update("delete the peers of cluster network "+network, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPeers)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(network))
	})
}
