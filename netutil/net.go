// Package netutil holds small helpers shared by the protocol, dataplane and
// state layers: MAC generation, address conversion and the rollback stack.
// It has no dependency on netlink, iptables or HTTP.
package netutil

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
)

// RandomMAC returns a random locally administered unicast MAC address.
// Random (rather than IP-derived) MACs avoid duplicates when an address is
// reused while a neighbour still caches the old entry (moby#48082).
func RandomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("read random MAC: %w", err)
	}
	mac[0] = (mac[0] &^ 0x01) | 0x02 // unicast, locally administered
	return mac, nil
}

// IPNet converts a prefix that keeps its host bits (an address with its
// subnet length, such as a gateway 10.0.0.1/24) to the net.IPNet netlink
// takes.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
