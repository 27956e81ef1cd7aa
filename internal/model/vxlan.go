package model

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// The VXLAN dataplane of cluster networks (issue 14). Each host's engine
// gives the same cluster network its own ID, so the names of what the
// hosts share derive from the VNI, which the cluster store allocates.

const (
	// DefaultVXLANPort is the UDP port of mynet's VXLAN traffic: Linux's
	// historical VXLAN port, not IANA's 4789, which swarm's overlay uses.
	DefaultVXLANPort = 8472
	// MaxVNI is the largest VXLAN network identifier (24 bits).
	MaxVNI = 1<<24 - 1
	// VXLANOverhead4 is what VXLAN over IPv4 adds to a frame: outer IPv4
	// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
	VXLANOverhead4 = 50
	// VXLANOverhead6 is the same over IPv6 (a 40-byte outer header).
	VXLANOverhead6 = 70
)

// vxlanPrefix starts the name of every VXLAN device mynet makes.
const vxlanPrefix = "mnx"

// VXLANName is the VXLAN device of a cluster network: mnx<VNI> in decimal,
// at most 11 bytes. The device carries the tag of the network's bridge
// (Tag, KindNetwork with the local network ID): it belongs to the network,
// so the ownership check, the orphan sweep and the fingerprint treat it as
// one of the network's links.
func VXLANName(vni uint32) string { return vxlanPrefix + strconv.FormatUint(uint64(vni), 10) }

// ParseVXLANName returns the VNI of a name VXLANName made.
func ParseVXLANName(name string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, vxlanPrefix)
	if !ok || s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || ValidateVNI(uint32(v)) != nil {
		return 0, false
	}
	return uint32(v), true
}

// ValidateVNI checks that vni is a usable VXLAN network identifier.
func ValidateVNI(vni uint32) error {
	if vni == 0 || vni > MaxVNI {
		return fmt.Errorf("VNI %d is out of range: use 1 to %d", vni, MaxVNI)
	}
	return nil
}

// VXLAN is the VXLAN device of a cluster network on one host.
type VXLAN struct {
	VNI uint32
	// Local is this host's VTEP: the underlay address the encapsulated
	// traffic leaves from, the address the other hosts send to.
	Local netip.Addr
	// Port is the UDP port; 0 means DefaultVXLANPort.
	Port int
	// UnderlayMTU is the MTU of the interface that carries Local; the
	// device gets it minus the encapsulation (VXLANOverhead4 or 6).
	UnderlayMTU int
}

// PortOrDefault is the UDP port in use.
func (v VXLAN) PortOrDefault() int {
	if v.Port == 0 {
		return DefaultVXLANPort
	}
	return v.Port
}

// MTU is the VXLAN device's MTU, and the most a cluster network's bridge
// and veths may have: a larger frame would not fit the underlay.
func (v VXLAN) MTU() int {
	if v.Local.Is6() && !v.Local.Is4In6() {
		return v.UnderlayMTU - VXLANOverhead6
	}
	return v.UnderlayMTU - VXLANOverhead4
}

// Validate checks v, naming what is wrong and how to fix it.
func (v VXLAN) Validate() error {
	if err := ValidateVNI(v.VNI); err != nil {
		return err
	}
	if err := ValidateVTEP(v.Local); err != nil {
		return fmt.Errorf("local VTEP: %w", err)
	}
	if v.Port < 0 || v.Port > 65535 {
		return fmt.Errorf("VXLAN port %d is out of range: use 1 to 65535 (0: %d)", v.Port, DefaultVXLANPort)
	}
	if v.MTU() < 68 {
		return fmt.Errorf("underlay MTU %d leaves %d for VXLAN %d, below the 68 IPv4 needs; give the underlay interface's MTU", v.UnderlayMTU, v.MTU(), v.VNI)
	}
	return nil
}

// ValidateVTEP checks that a is usable as a VTEP: a unicast address of
// the underlay.
func ValidateVTEP(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("no address given")
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not a unicast address of the underlay", a)
	}
	return nil
}

// VXLANPeer is an endpoint on another host, as this host's VXLAN device
// reaches it: a permanent FDB entry MAC -> VTEP and a permanent neighbour
// entry IP -> MAC. An endpoint with two addresses (IPv4 and IPv6) is two
// peers with the same MAC and VTEP.
type VXLANPeer struct {
	IP   netip.Addr
	MAC  net.HardwareAddr
	VTEP netip.Addr
}

func (p VXLANPeer) String() string {
	return p.IP.String() + " " + p.MAC.String() + " via " + p.VTEP.String()
}

// Validate checks p, naming what is wrong.
func (p VXLANPeer) Validate() error {
	if !p.IP.IsValid() || p.IP.IsUnspecified() || p.IP.IsMulticast() {
		return fmt.Errorf("peer address %v is not a unicast address", p.IP)
	}
	if len(p.MAC) != 6 || p.MAC[0]&1 != 0 || [6]byte(p.MAC) == [6]byte{} {
		return fmt.Errorf("peer %s: MAC %q is not a unicast Ethernet address", p.IP, p.MAC)
	}
	if err := ValidateVTEP(p.VTEP); err != nil {
		return fmt.Errorf("peer %s: VTEP: %w", p.IP, err)
	}
	return nil
}

// VXLANChain is the iptables chain (filter table) that accepts the VXLAN
// port's traffic from the known VTEPs only: MYNET-VXLAN for the default
// instance, MYNET-<hash>-VXLAN for any other, beside ChainsFor's chains.
func VXLANChain(instance string) string {
	return strings.TrimSuffix(ChainsFor(instance).Forward, "FORWARD") + "VXLAN"
}

// VXLANTableName is the nftables table (families ip and ip6) of the same
// filter under the nftables backend: "mynet_vxlan" for the default
// instance, "mynet_<hash>_vxlan" for any other. A table of its own, not a
// chain of the firewall's: that table goes with the family's last network,
// the filter with the last cluster network.
func VXLANTableName(instance string) string { return SpoofTableName(instance) + "_vxlan" }
