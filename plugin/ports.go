package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/internal/driver"
)

// optPortMap is the sandbox label carrying the container's -p bindings.
const optPortMap = "com.docker.network.portmap"

// optNoProxy6to4 is the ProgramExternalConnectivity option Docker 29 adds
// (moby daemon/libnetwork/drivers/remote/driver.go, netlabel.NoProxy6To4).
const optNoProxy6to4 = "com.docker.network.driver.private.no_proxy_6to4"

// registerPorts adds the calls that publish and unpublish a container's
// ports. The engine sends them only for the container's gateway endpoint
// (protocol.md 2.4).
func registerPorts(r *Router, d *driver.Driver) {
	handle(r, "NetworkDriver.ProgramExternalConnectivity", func(ctx context.Context, req *network.ProgramExternalConnectivityRequest) (*empty, error) {
		if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
			return nil, err
		}
		bindings, err := parsePortMap(req.Options[optPortMap])
		if err != nil {
			return nil, err
		}
		// Docker 29 adds no_proxy_6to4 when another endpoint is the IPv6
		// gateway: host IPv6 addresses must not be mapped to this
		// container's IPv4 address. mynet never maps across families
		// (each host address goes to the container address of its own
		// family), so the flag changes nothing; it is still checked.
		if _, err := boolOption(req.Options, optNoProxy6to4, false); err != nil {
			return nil, err
		}
		return nil, d.ProgramExternalConnectivity(ctx, req.NetworkID, req.EndpointID, bindings)
	})
	handleRemoval(r, "NetworkDriver.RevokeExternalConnectivity", func(ctx context.Context, req *network.RevokeExternalConnectivityRequest) (*empty, error) {
		if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
			return nil, err
		}
		return nil, d.RevokeExternalConnectivity(ctx, req.EndpointID)
	})
}

// parsePortMap decodes the engine's port map, which arrives as a generic
// JSON value inside the options map.
func parsePortMap(raw any) ([]driver.PortBinding, error) {
	if raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, badRequestf("option %s: %v", optPortMap, err)
	}
	var out []driver.PortBinding
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, badRequestf("option %s is not a list of port bindings: %v", optPortMap, err)
	}
	for i, pb := range out {
		if err := checkBinding(pb); err != nil {
			return nil, badRequestf("option %s[%d]: %w", optPortMap, i, err)
		}
	}
	return out, nil
}

// checkBinding refuses what no rule can publish, before anything is
// written: the engine's CLI refuses these too, but the socket is open to
// any client of the API.
func checkBinding(b driver.PortBinding) error {
	if b.Port == 0 {
		//lint:ignore ST1005 the message starts with the field it names
		return errors.New("Port is 0; publish a container port from 1 to 65535")
	}
	if b.HostPortEnd != 0 && b.HostPortEnd < b.HostPort {
		return fmt.Errorf("HostPortEnd %d is below HostPort %d; give a host port range low to high", b.HostPortEnd, b.HostPort)
	}
	if b.HostIP == "" {
		return nil
	}
	a, err := netip.ParseAddr(b.HostIP)
	if err != nil {
		return fmt.Errorf("HostIP %q: %v", b.HostIP, err)
	}
	if err := hostAddress(a.Unmap()); err != nil {
		return fmt.Errorf("HostIP %s %w", b.HostIP, err)
	}
	return nil
}

// hostAddress refuses the addresses a port cannot be published on: a
// packet to them is not addressed to one host. The unspecified address is
// fine: it means all of the host's addresses.
func hostAddress(a netip.Addr) error {
	switch {
	case a.IsMulticast():
		return errors.New("is a multicast address; publish on one of the host's unicast addresses, or on none for all")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("is the broadcast address; publish on one of the host's unicast addresses, or on none for all")
	}
	return nil
}
