package plugin

import (
	"context"

	"github.com/mynet/mynet/internal/driver"
)

// The types below are those of moby's remote driver API that
// go-plugins-helpers lacks (moby daemon/libnetwork/drivers/remote/api/api.go:
// GetCapabilityResponse, GwAllocCheckerRequest, GwAllocCheckerResponse).
// Field names are the JSON keys: the engine encodes them untagged.

// capabilities is the GetCapabilities answer with GwAllocChecker, which
// Docker 28.0 added (moby#49372). Older engines ignore the unknown key.
type capabilities struct {
	Scope             string
	ConnectivityScope string
	// GwAllocChecker makes the engine POST GwAllocCheck before each
	// CreateNetwork, asking whether to reserve gateway addresses.
	GwAllocChecker bool
}

// gwAllocCheckRequest has the Options of the CreateNetwork that follows.
type gwAllocCheckRequest struct {
	Options map[string]any
}

// gwAllocCheckResponse tells the engine not to reserve a gateway address
// of a family from the IPAM driver.
type gwAllocCheckResponse struct {
	SkipIPv4, SkipIPv6 bool
}

// gwAllocCheck answers whether a network created with these options needs
// gateway addresses, as Docker's bridge driver does (moby v28.5.2
// libnetwork/drivers/bridge/bridge_linux.go, GetSkipGwAlloc): none of a
// family in gateway mode isolated, and no IPv4 one on an internal network
// with inhibit_ipv4, whose bridge gets no IPv4 address and whose
// containers get no default route. The engine then sends CreateNetwork
// without a Gateway of that family, unless the user gave --gateway.
// Engines before 28.0 never ask, and send a gateway anyway, which mynet
// then keeps off the bridge. The options are checked as CreateNetwork
// checks them, so that a mistake is reported before the engine allocates
// anything for the network.
func gwAllocCheck(_ context.Context, req *gwAllocCheckRequest) (*gwAllocCheckResponse, error) {
	var cfg NetworkConfig
	if err := parseTopLevel(req.Options, &cfg); err != nil {
		return nil, err
	}
	generic, err := genericOptions(req.Options)
	if err != nil {
		return nil, err
	}
	if err := parseGeneric(generic, &cfg); err != nil {
		return nil, err
	}
	if err := checkOptions(cfg); err != nil {
		return nil, err
	}
	return &gwAllocCheckResponse{
		SkipIPv4: cfg.GatewayMode4 == driver.GatewayIsolated || (cfg.InhibitIPv4 && cfg.Internal),
		SkipIPv6: cfg.GatewayMode6 == driver.GatewayIsolated,
	}, nil
}
