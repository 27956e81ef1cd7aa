package state

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/mynet/mynet/internal/model"
)

// Every record is checked here, when it is loaded, so that a record that
// decodes but names an address, prefix, MAC or interface that does not
// parse fails the load as a whole: the caller then refuses to start
// instead of restoring part of the state and treating the kernel objects
// of the rest as orphans.

func (n *Network) validate(key string) error {
	if n.ID == "" || n.ID != key {
		return fmt.Errorf("ID %q does not match the key", n.ID)
	}
	if err := validIfName("Bridge", n.Bridge); err != nil {
		return err
	}
	if n.MTU < 0 {
		return fmt.Errorf("MTU %d is negative", n.MTU)
	}
	for _, s := range append(append([]Subnet(nil), n.IPv4...), n.IPv6...) {
		pool, err := netip.ParsePrefix(s.Pool)
		if err != nil {
			return fmt.Errorf("subnet: %w", err)
		}
		if s.Gateway == "" {
			continue
		}
		gw, err := netip.ParsePrefix(s.Gateway)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		if !pool.Contains(gw.Addr()) {
			return fmt.Errorf("gateway %s is outside subnet %s", gw, pool)
		}
	}
	if n.HostBinding != "" {
		if _, err := netip.ParseAddr(n.HostBinding); err != nil {
			return fmt.Errorf("HostBinding: %w", err)
		}
	}
	for _, name := range n.TrustedInterfaces {
		if err := model.ValidateTrustedInterface(name); err != nil {
			return fmt.Errorf("TrustedInterfaces: %w", err)
		}
	}
	if n.IfacePrefix != "" {
		if err := model.ValidateIfacePrefix(n.IfacePrefix); err != nil {
			return fmt.Errorf("IfacePrefix: %w", err)
		}
	}
	if n.Cluster != "" {
		if err := model.ValidateClusterName("Cluster", n.Cluster); err != nil {
			return err
		}
		if err := model.ValidateVNI(n.VNI); err != nil {
			return fmt.Errorf("VNI: %w", err)
		}
	}
	return nil
}

func (e *Endpoint) validate(key string) error {
	if e.ID == "" || e.NetworkID == "" || e.NetworkID+"/"+e.ID != key {
		return fmt.Errorf("NetworkID %q and ID %q do not match the key", e.NetworkID, e.ID)
	}
	if err := validIfName("HostVeth", e.HostVeth); err != nil {
		return err
	}
	if e.ContainerVeth != "" {
		if err := validIfName("ContainerVeth", e.ContainerVeth); err != nil {
			return err
		}
	}
	if e.MAC != "" {
		if hw, err := net.ParseMAC(e.MAC); err != nil || len(hw) != 6 {
			return fmt.Errorf("MAC %q is not an Ethernet address", e.MAC)
		}
	}
	for field, a := range map[string]string{"IPv4": e.IPv4, "IPv6": e.IPv6} {
		if a == "" {
			continue
		}
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
	}
	for _, p := range e.Ports {
		switch p.Proto {
		case "tcp", "udp", "sctp":
		default:
			return fmt.Errorf("port %d: protocol %q", p.Port, p.Proto)
		}
		if p.HostIP != "" {
			if _, err := netip.ParseAddr(p.HostIP); err != nil {
				return fmt.Errorf("port %d: HostIP: %w", p.Port, err)
			}
		}
		if _, err := netip.ParseAddr(p.ContainerIP); err != nil {
			return fmt.Errorf("port %d: ContainerIP: %w", p.Port, err)
		}
	}
	return nil
}

func (p *Pool) validate(key string) error {
	if p.ID == "" || p.ID != key {
		return fmt.Errorf("ID %q does not match the key", p.ID)
	}
	pool, err := netip.ParsePrefix(p.Pool)
	if err != nil {
		return fmt.Errorf("Pool: %w", err)
	}
	if p.Range != "" {
		r, err := netip.ParsePrefix(p.Range)
		if err != nil {
			//lint:ignore ST1005 Range is the field's name, as in the other messages
			return fmt.Errorf("Range: %w", err)
		}
		if !pool.Contains(r.Addr()) || r.Bits() < pool.Bits() {
			return fmt.Errorf("range %s is outside pool %s", r, pool)
		}
	}
	for field, a := range map[string]string{"Cursor": p.Cursor, "Gateway": p.Gateway} {
		if a == "" {
			continue
		}
		if _, err := parseAddrOrPrefix(a); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
	}
	return nil
}

// validateAddr checks an allocation (key pool "|" address) against its
// pool, which must be loaded and valid.
func validateAddr(p *Pool, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return err
	}
	if pool := netip.MustParsePrefix(p.Pool); !pool.Contains(a) {
		return fmt.Errorf("address %s is outside pool %s", a, pool)
	}
	return nil
}

func parseAddrOrPrefix(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Addr(), err
	}
	return netip.ParseAddr(s)
}

// validIfName accepts what the kernel accepts as an interface name
// (dev_valid_name): 1 to 15 bytes, no '/', ':' or white space, not "." or "..".
func validIfName(field, name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\v\f") {
		return fmt.Errorf("%s %q is not a valid interface name", field, name)
	}
	return nil
}
