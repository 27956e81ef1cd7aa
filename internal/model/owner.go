package model

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
)

// DefaultInstance is serve's default --name. Its objects get the plain
// names (MYNET-*, table mynet); any other instance's carry its hash, so
// that two instances on one host never touch each other's objects.
const DefaultInstance = "mynet"

// InstanceHash is the short hash of an instance name that scopes its
// iptables chains and its nftables table: 6 hex digits of SHA-256, within
// iptables' 28-character chain names.
func InstanceHash(instance string) string {
	sum := sha256.Sum256([]byte(instance))
	return hex.EncodeToString(sum[:3])
}

// Chains names one instance's iptables chains.
type Chains struct {
	Forward, Isolation, Egress, Postrouting, DNAT string
	// LAN accepts what comes from outside every bridge, and returns what
	// comes from one: gateway mode nat-unprotected opens a network to the
	// LAN, not to other networks.
	LAN string
	// Direct, in the mangle table's PREROUTING, drops new connections
	// routed to a container's address from outside its bridge, before
	// any filter rule can accept them (direct-routing protection).
	Direct string
}

// Tables of mynet's chains.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
	TableMangle = "mangle"
)

// ChainsFor returns the chains of an instance: MYNET-FORWARD... for the
// default one, MYNET-<hash>-FORWARD... for any other.
func ChainsFor(instance string) Chains {
	p := "MYNET"
	if instance != DefaultInstance {
		p = "MYNET-" + InstanceHash(instance)
	}
	return Chains{
		Forward:     p + "-FORWARD",
		Isolation:   p + "-ISOLATION",
		Egress:      p + "-EGRESS",
		Postrouting: p + "-POSTROUTING",
		DNAT:        p + "-DNAT",
		LAN:         p + "-LAN",
		Direct:      p + "-DIRECT",
	}
}

// TableChain is a chain with its table.
type TableChain struct{ Table, Chain string }

// Tables lists each chain with its table, in creation order: a chain that
// jumps to another comes first, so deletion can go in the same order.
func (c Chains) Tables() []TableChain {
	return []TableChain{
		{TableFilter, c.Forward}, {TableFilter, c.Isolation}, {TableFilter, c.Egress}, {TableFilter, c.LAN},
		{TableNAT, c.Postrouting}, {TableNAT, c.DNAT},
		{TableMangle, c.Direct},
	}
}

// All lists the chain names in creation order.
func (c Chains) All() []string {
	var out []string
	for _, tc := range c.Tables() {
		out = append(out, tc.Chain)
	}
	return out
}

// ByTable splits the chains into the filter and the nat table's; the
// mangle table's is c.Direct.
func (c Chains) ByTable() (filter, nat []string) {
	for _, tc := range c.Tables() {
		switch tc.Table {
		case TableNAT:
			nat = append(nat, tc.Chain)
		case TableFilter:
			filter = append(filter, tc.Chain)
		}
	}
	return filter, nat
}

// SpoofTableName is the nftables bridge table of an instance's
// anti-spoofing filter: "mynet" for the default instance, "mynet_<hash>"
// for any other, mirroring the chain names.
func SpoofTableName(instance string) string {
	if instance == DefaultInstance {
		return "mynet"
	}
	return "mynet_" + InstanceHash(instance)
}

// RuleComment is the comment of every per-network rule, naming its network
// and, for port rules, its endpoint: "mynet net=<ID>[ ep=<ID>]". Deletion
// and orphan removal find rules by it.
func RuleComment(networkID, endpointID string) string {
	c := "mynet net=" + networkID
	if endpointID != "" {
		c += " ep=" + endpointID
	}
	return c
}

// HookComment marks the jumps from built-in chains into an instance's.
func HookComment(instance string) string { return "mynet " + instance }

var ruleCommentRE = regexp.MustCompile(`(?:--)?comment "?mynet net=([0-9a-f]+)(?: ep=([0-9a-f]+))?`)

// ParseRuleComment finds a RuleComment in a rule as iptables -S prints it,
// or in an nftables element or chain as nft lists it (comment "...").
func ParseRuleComment(rule string) (networkID, endpointID string, ok bool) {
	m := ruleCommentRE.FindStringSubmatch(rule)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// Names derived from IDs, each within IFNAMSIZ: a 3-character prefix plus
// the 12-character short ID Docker shows.
const (
	BridgePrefix        = "mn-"
	HostVethPrefix      = "mnv"
	ContainerVethPrefix = "mnc"
)

// BridgeName is the default bridge name of a network.
func BridgeName(networkID string) string { return BridgePrefix + Short(networkID) }

// VethNames are the host and container ends of an endpoint's veth pair.
func VethNames(endpointID string) (host, container string) {
	return HostVethPrefix + Short(endpointID), ContainerVethPrefix + Short(endpointID)
}
