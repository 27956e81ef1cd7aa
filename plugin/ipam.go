package plugin

import (
	"context"
	"net"
	"net/netip"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/mynet/mynet/internal/driver"
)

// Address spaces. mynet's pools are host-local; the global space exists
// because the engine asks for one, and is refused.
const (
	localAddressSpace  = "local"
	globalAddressSpace = "global"
	gatewayRequestKey  = "RequestAddressType"
	gatewayRequestType = "com.docker.network.gateway"
	macAddressOption   = "com.docker.network.endpoint.macaddress"
)

// ErrPoolOverlap is returned for a --subnet that overlaps a held pool.
var ErrPoolOverlap = driver.ErrPoolOverlap

func registerIPAM(r *Router, d *driver.Driver) {
	handle(r, "IpamDriver.GetCapabilities", func(context.Context, *empty) (*ipamapi.CapabilitiesResponse, error) {
		// With RequiresMACAddress the engine generates each endpoint's MAC
		// before asking for its address and sends it along: a key that makes
		// a retried RequestAddress recognisable (protocol.md section 4).
		return &ipamapi.CapabilitiesResponse{RequiresMACAddress: true}, nil
	})
	handle(r, "IpamDriver.GetDefaultAddressSpaces", func(context.Context, *empty) (*ipamapi.AddressSpacesResponse, error) {
		return &ipamapi.AddressSpacesResponse{LocalDefaultAddressSpace: localAddressSpace, GlobalDefaultAddressSpace: globalAddressSpace}, nil
	})
	handle(r, "IpamDriver.RequestPool", func(ctx context.Context, req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
		preq, err := parsePoolRequest(req)
		if err != nil {
			return nil, err
		}
		id, err := d.RequestPool(ctx, preq)
		if err != nil {
			return nil, err
		}
		// The pool ID is the subnet itself.
		return &ipamapi.RequestPoolResponse{PoolID: id, Pool: id, Data: map[string]string{}}, nil
	})
	handleRemoval(r, "IpamDriver.ReleasePool", func(_ context.Context, req *ipamapi.ReleasePoolRequest) (*empty, error) {
		return nil, d.ReleasePool(req.PoolID)
	})
	handle(r, "IpamDriver.RequestAddress", func(ctx context.Context, req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
		areq := driver.AddressRequest{PoolID: req.PoolID, Gateway: req.Options[gatewayRequestKey] == gatewayRequestType, Owner: macOption(req.Options)}
		if req.Address != "" {
			a, err := netip.ParseAddr(req.Address)
			if err != nil {
				return nil, badRequestf("address %q: %v", req.Address, err)
			}
			areq.Address = a.Unmap()
		}
		addr, err := d.RequestAddress(ctx, areq)
		if err != nil {
			return nil, err
		}
		return &ipamapi.RequestAddressResponse{Address: addr.String(), Data: map[string]string{}}, nil
	})
	handleRemoval(r, "IpamDriver.ReleaseAddress", func(ctx context.Context, req *ipamapi.ReleaseAddressRequest) (*empty, error) {
		addr, err := netip.ParseAddr(req.Address)
		if err != nil {
			return nil, badRequestf("address %q: %v", req.Address, err)
		}
		return nil, d.ReleaseAddress(context.WithoutCancel(ctx), req.PoolID, addr.Unmap())
	})
}

// parsePoolRequest checks a RequestPool's own form: mynet's address
// space, no options, canonical prefixes of the family asked for, and an
// --ip-range only with a --subnet.
func parsePoolRequest(req *ipamapi.RequestPoolRequest) (driver.PoolRequest, error) {
	out := driver.PoolRequest{V6: req.V6}
	if req.AddressSpace != "" && req.AddressSpace != localAddressSpace {
		return out, badRequestf("address space %q is not supported; mynet pools are in %q", req.AddressSpace, localAddressSpace)
	}
	for k := range req.Options {
		return out, badRequestf("unknown IPAM option %q (--ipam-opt); mynet's IPAM takes none", k)
	}
	var err error
	if req.Pool != "" {
		if out.Subnet, err = parseCanonical("subnet", req.Pool, req.V6); err != nil {
			return out, err
		}
	} else if req.SubPool != "" {
		return out, badRequestf("--ip-range %s needs a --subnet", req.SubPool)
	}
	if req.SubPool != "" {
		if out.Range, err = parseCanonical("ip-range", req.SubPool, req.V6); err != nil {
			return out, err
		}
	}
	return out, nil
}

func parseCanonical(what, s string, v6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, badRequestf("%s %q is not a CIDR: %v", what, s, err)
	}
	if p.Addr().Is6() != v6 || p.Addr().Is4In6() {
		return p, badRequestf("%s %s is not an %s prefix", what, p, family(v6))
	}
	if p != p.Masked() {
		return p, badRequestf("%s %s has host bits set; use %s", what, p, p.Masked())
	}
	return p, nil
}

// macOption is the endpoint MAC the engine sends with RequestAddress, in
// canonical form, or "".
func macOption(opts map[string]string) string {
	mac, err := net.ParseMAC(opts[macAddressOption])
	if err != nil {
		return ""
	}
	return mac.String()
}
