package model

import "strings"

// Firewall backends mynet can keep its rules in (serve --firewall).
const (
	FirewallAuto     = "auto"
	FirewallIPTables = "iptables"
	FirewallNFTables = "nftables"
)

// NFTTableName is the nftables table (one of family ip, one of family ip6)
// that holds an instance's firewall rules under the nftables backend:
// named like its anti-spoofing table, which is of family bridge, so the
// names never collide.
func NFTTableName(instance string) string { return SpoofTableName(instance) }

// Kinds of per-network chain in the nftables firewall table.
const (
	NFTChainIn     = "in"      // forward, into the bridge
	NFTChainOut    = "out"     // forward, out of the bridge
	NFTChainNATOut = "nat-out" // postrouting, from the bridge: masquerade
	NFTChainNATIn  = "nat-in"  // postrouting, into the bridge: loopback sources
	NFTChainDirect = "direct"  // prerouting, routed to the bridge: direct-routing protection
)

const nftNetChainPrefix = "net-"

// NFTNetworkChain names a network's chain of one kind: "net-<ID>-<kind>".
// The full network ID in the name is what ownership and orphan removal
// read, as the iptables backend reads RuleComment.
func NFTNetworkChain(networkID, kind string) string {
	return nftNetChainPrefix + networkID + "-" + kind
}

// ParseNFTNetworkChain returns the network ID of a chain NFTNetworkChain
// named.
func ParseNFTNetworkChain(chain string) (networkID string, ok bool) {
	rest, ok := strings.CutPrefix(chain, nftNetChainPrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "-")
	if !ok || ValidateID("network", id) != nil {
		return "", false
	}
	return id, true
}
