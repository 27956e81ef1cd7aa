package model

import "slices"

// Digests summarise mynet's kernel objects one by one, so that a change
// from outside can be told apart from mynet's own changes made at the same
// time, and repaired where it happened. Keys:
//
//	"net:ID"    a network's bridge (state, addresses, switches) and rules
//	"ep:ID"     an endpoint's host veth (state, master) and port rules
//	"veth:NAME" the anti-spoofing elements of a veth (SpoofFingerprint)
//	"spoof"     the anti-spoofing table's rules (SpoofFingerprint)
//	""          everything else: chains, hooks, the Docker chains they
//	            depend on, IPv4 forwarding
//	"docker"    Docker's bridges as its rules name them (DigestDocker)
//	"firewall"  which backend holds Docker's rules (DigestFirewall)
//
// Values are opaque; an object that is gone has no key.
type Digests map[string]string

// DigestDocker is the key of Docker's bridges: the LAN chain of gateway
// mode nat-unprotected follows them. They change with every Docker network
// created or removed, which is no damage to mynet's rules: only the
// networks in nat-unprotected are ensured again, and it is not reported
// as a repair.
const DigestDocker = "docker"

// DigestFirewall is the key of where Docker's rules are: its nftables
// tables, and under the iptables backend its iptables chains. A change
// makes the next pass ask whether to follow dockerd to its other backend
// (serve --firewall auto); it is no damage to mynet's rules.
const DigestFirewall = "firewall"

// Changed returns the keys whose values differ between d and o, including
// keys only one of them has.
func (d Digests) Changed(o Digests) []string {
	var out []string
	for k, v := range d {
		if w, ok := o[k]; !ok || w != v {
			out = append(out, k)
		}
	}
	for k := range o {
		if _, ok := d[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
