package model

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The cluster store's key layout (etcd), under one versioned root so that a
// later incompatible layout can live beside this one during an upgrade:
//
//	<root>/networks/<name>        ClusterNetwork (JSON): spec, VNI, member hosts
//	<root>/vnis/<vni>             the name of the network holding the VNI
//	<root>/cursors/<name>         the address handed out last (round-robin)
//	<root>/claims/<name>/<addr>   EndpointAdvert (JSON): who holds the address
//	<root>/hosts/<id>             ClusterHost (JSON), kept while the host is known
//	<root>/alive/<id>             HostAlive (JSON), on the host's lease
//
// Address claims are deliberately not on a lease: a host cut off from etcd
// for longer than its TTL must not lose its addresses (they are freed by a
// live host, after a grace period, only once the host's liveness key is gone).

// DefaultClusterRoot is the root of the layout above.
const DefaultClusterRoot = "/mynet/v1"

// ClusterKeys builds the store's keys under a root (DefaultClusterRoot in
// production; tests use roots of their own on one etcd).
type ClusterKeys struct{ Root string }

// Network is the key of a cluster network's record.
func (k ClusterKeys) Network(name string) string { return k.Networks() + name }

// Networks is the prefix of every network record.
func (k ClusterKeys) Networks() string { return k.Root + "/networks/" }

// VNI is the key that allocates a VNI.
func (k ClusterKeys) VNI(vni uint32) string { return k.VNIs() + strconv.FormatUint(uint64(vni), 10) }

// VNIs is the prefix of every VNI allocation.
func (k ClusterKeys) VNIs() string { return k.Root + "/vnis/" }

// Cursor is the key of a network's round-robin cursor.
func (k ClusterKeys) Cursor(name string) string { return k.Root + "/cursors/" + name }

// Claim is the key of one address claim.
func (k ClusterKeys) Claim(name string, a netip.Addr) string { return k.Claims(name) + a.String() }

// Claims is the prefix of a network's claims; the trailing slash keeps
// network "app" from matching "app2".
func (k ClusterKeys) Claims(name string) string { return k.AllClaims() + name + "/" }

// AllClaims is the prefix of every claim of every network.
func (k ClusterKeys) AllClaims() string { return k.Root + "/claims/" }

// Host is the key of a host's registration.
func (k ClusterKeys) Host(id string) string { return k.Hosts() + id }

// Hosts is the prefix of every host registration.
func (k ClusterKeys) Hosts() string { return k.Root + "/hosts/" }

// Alive is the key of a host's liveness, on its lease.
func (k ClusterKeys) Alive(id string) string { return k.AliveAll() + id }

// AliveAll is the prefix of every liveness key.
func (k ClusterKeys) AliveAll() string { return k.Root + "/alive/" }

// ClaimAddr parses the address at the end of a claim key.
func (k ClusterKeys) ClaimAddr(name, key string) (netip.Addr, error) {
	s, ok := strings.CutPrefix(key, k.Claims(name))
	if !ok {
		return netip.Addr{}, fmt.Errorf("key %q is not a claim of network %q", key, name)
	}
	return netip.ParseAddr(s)
}

// ErrInvalidClusterName is returned for a cluster network or host name
// that cannot be a key component.
var ErrInvalidClusterName = errors.New("invalid cluster name")

// ValidateClusterName checks a cluster network name (-o mynet.cluster=NAME)
// or a host ID: 1-63 characters of letters, digits, '.', '_' and '-',
// starting with a letter or digit. Names become etcd key components, so a
// '/' (a new key level) or an empty name is refused.
func ValidateClusterName(kind, name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("%w: %s %q must be 1 to 63 characters", ErrInvalidClusterName, kind, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return fmt.Errorf("%w: %s %q: character %q at %d; use letters, digits, '.', '_', '-', starting with a letter or digit",
				ErrInvalidClusterName, kind, name, c, i)
		}
	}
	return nil
}

// ClusterSpec is what every host of a cluster network must agree on: the
// address space (one subnet shared by all hosts, whose bridges all carry
// the gateway) and the options that make the network behave alike on every
// host. A host creating the network with a different spec is refused.
type ClusterSpec struct {
	Name     string       `json:"name"`
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	IPRange  netip.Prefix `json:"ipRange,omitzero"`
	Internal bool         `json:"internal,omitempty"`
	// ICC false means inter-container traffic is dropped, across hosts too.
	ICC bool `json:"icc"`
	MTU int  `json:"mtu,omitempty"`
}

// Diff names each field in which o (this host's spec) differs from s (the
// cluster's), as "subnet: 10.77.0.0/24 in the cluster, 10.78.0.0/24 here";
// nil when they agree.
func (s ClusterSpec) Diff(o ClusterSpec) []string {
	var d []string
	add := func(field string, cluster, here any) {
		if c, h := show(cluster), show(here); c != h {
			d = append(d, fmt.Sprintf("%s: %s in the cluster, %s here", field, c, h))
		}
	}
	add("name", s.Name, o.Name)
	add("subnet", s.Subnet, o.Subnet)
	add("gateway", s.Gateway, o.Gateway)
	add("ip-range", s.IPRange, o.IPRange)
	add("internal", s.Internal, o.Internal)
	add("icc", s.ICC, o.ICC)
	add("mtu", s.MTU, o.MTU)
	return d
}

// show formats a spec field; an unset address or prefix is "none".
func show(v any) string {
	if z, ok := v.(interface{ IsValid() bool }); ok && !z.IsValid() {
		return "none"
	}
	return fmt.Sprint(v)
}

// ClusterNetwork is the record of a cluster network: its spec, its VNI and
// the hosts that have joined it. Members are kept in the record (not in
// keys of their own) so that a join and the last host's leave are both a
// compare-and-swap on this one key and cannot interleave.
type ClusterNetwork struct {
	Spec    ClusterSpec `json:"spec"`
	VNI     uint32      `json:"vni"`
	Members []string    `json:"members"`
}

// HasMember reports whether host has joined the network.
func (n ClusterNetwork) HasMember(host string) bool { return slices.Contains(n.Members, host) }

// EndpointAdvert is the value of an address claim: which host holds the
// address and how other hosts reach it (the FDB entry MAC -> VTEP and the
// neighbour entry IP -> MAC). MAC may be empty while the endpoint is not
// created yet.
type EndpointAdvert struct {
	Host string     `json:"host"`
	IP   netip.Addr `json:"ip"`
	MAC  string     `json:"mac,omitempty"`
	VTEP netip.Addr `json:"vtep"`
	// Endpoint is the engine's endpoint ID on the claiming host, when known.
	Endpoint string `json:"endpoint,omitempty"`
}

// ClusterHost is a host's registration. It outlives the host's lease, so
// that a live host can still name a dead one and free its claims.
type ClusterHost struct {
	ID   string     `json:"id"`
	VTEP netip.Addr `json:"vtep"`
}

// HostAlive is the value of a host's liveness key: the process that holds
// it (Instance, random per process), so that a restart of the same host is
// told apart from a second machine using the same host ID.
type HostAlive struct {
	ID       string     `json:"id"`
	VTEP     netip.Addr `json:"vtep"`
	Instance string     `json:"instance"`
}
