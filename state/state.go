// Package state persists mynet's networks, endpoints, IPAM pools and address
// allocations in one bbolt file, one transaction per plugin operation.
//
// The engine never replays CreateNetwork or Join to a remote plugin after a
// restart (protocol.md section 5), so this file is the only memory mynet has
// of what it built. The package knows nothing about kernel objects: records
// are plain data, and reconciling them with the kernel is the caller's job.
package state

import (
	"errors"
	"time"
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
	// bucketClusterQueue holds the cluster store deletes that could not
	// be made when they were asked for (see clusterqueue.go).
	bucketClusterQueue = []byte("clusterqueue") // key: big-endian sequence
	keySchema          = []byte("schema")
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
	// GatewayMode4 and GatewayMode6 are gateway_mode_ipv4/_ipv6; empty is
	// nat, as for records written before the option existed.
	GatewayMode4 string `json:",omitempty"`
	GatewayMode6 string `json:",omitempty"`
	// TrustedInterfaces are trusted_host_interfaces, split at ':'.
	TrustedInterfaces []string `json:",omitempty"`
	// InhibitIPv4 is the bridge driver's inhibit_ipv4: no IPv4 address
	// on the bridge.
	InhibitIPv4 bool `json:",omitempty"`
	// AntiSpoofing is the anti-spoofing filter (mynet.anti_spoofing). In
	// JSON it is the inverse "SpoofingAllowed", so that the zero value of
	// a record written before the option existed protects (see
	// network_json.go).
	AntiSpoofing bool `json:"-"`
	// HostBinding is the default host address of published ports.
	HostBinding string `json:",omitempty"`
	// IfacePrefix is the container interface-name prefix the engine gets
	// at Join (container_iface_prefix); empty means "eth", as for records
	// written before the option existed.
	IfacePrefix string `json:",omitempty"`
	// Cluster is the cluster network's name (mynet.cluster) and VNI its
	// VXLAN network identifier from the cluster store; empty and zero for
	// a single-host network. They are kept here so that a restart with
	// the store down still rebuilds the VXLAN device.
	Cluster string `json:",omitempty"`
	VNI     uint32 `json:",omitempty"`
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
	// ClusterMode is set in the daemon's dump when it runs with
	// --cluster-store, so that operators' tools ask for the cluster's
	// status only then.
	ClusterMode bool `json:",omitempty"`
}
