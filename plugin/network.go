package plugin

import (
	"context"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// ErrNotFound means the plugin has no record of a network or endpoint.
var ErrNotFound = driver.ErrNotFound

// Dump is mynet's whole state as Mynet.State answers it: the one type for
// the state a client sees.
type Dump = state.Snapshot

// Register adds every protocol method of both interfaces, and the state
// dump, to the router, served by d.
func Register(r *Router, d *driver.Driver) {
	d.SetEngineActivated(r.Activated)
	registerNetworkDriver(r, d)
	registerIPAM(r, d)
	handle(r, "Mynet.State", func(context.Context, *empty) (*Dump, error) { return d.Dump(), nil })
}

func registerNetworkDriver(r *Router, d *driver.Driver) {
	handle(r, "NetworkDriver.GetCapabilities", func(context.Context, *empty) (*capabilities, error) {
		// Scope stays local: a global scope would make the engine expect
		// a swarm's network allocator, which legacy plugins never get.
		// ConnectivityScope global only informs (docker network inspect).
		conn := network.LocalScope
		if d.ClusterMode() {
			conn = network.GlobalScope
		}
		return &capabilities{Scope: network.LocalScope, ConnectivityScope: conn, GwAllocChecker: true}, nil
	})
	handle(r, "NetworkDriver.GwAllocCheck", gwAllocCheck)
	handle(r, "NetworkDriver.CreateNetwork", func(ctx context.Context, req *network.CreateNetworkRequest) (*empty, error) {
		cfg, err := ParseCreateNetwork(req)
		if err != nil {
			return nil, err
		}
		return nil, d.CreateNetwork(ctx, cfg)
	})
	handleRemoval(r, "NetworkDriver.DeleteNetwork", func(ctx context.Context, req *network.DeleteNetworkRequest) (*empty, error) {
		if err := model.ValidateID("network ID", req.NetworkID); err != nil {
			return nil, badRequest(err)
		}
		return nil, d.DeleteNetwork(ctx, req.NetworkID)
	})
	handle(r, "NetworkDriver.CreateEndpoint", func(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
		return createEndpoint(ctx, d, req)
	})
	// EndpointOperInfo is called often and its answer is unused for remote
	// drivers (protocol.md 2.2), so it answers at once.
	handle(r, "NetworkDriver.EndpointOperInfo", func(context.Context, *network.InfoRequest) (*network.InfoResponse, error) {
		return &network.InfoResponse{Value: map[string]string{}}, nil
	})
	handleRemoval(r, "NetworkDriver.DeleteEndpoint", func(ctx context.Context, req *network.DeleteEndpointRequest) (*empty, error) {
		if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
			return nil, err
		}
		return nil, d.DeleteEndpoint(ctx, req.NetworkID, req.EndpointID)
	})
	handle(r, "NetworkDriver.Join", func(_ context.Context, req *network.JoinRequest) (*network.JoinResponse, error) {
		return join(d, req)
	})
	// Leave unpublishes ports the engine did not revoke (Docker 29 may not);
	// the engine moves the veth back to the host itself, and DeleteEndpoint
	// removes it. Its errors only reach the engine's log: a removal.
	handleRemoval(r, "NetworkDriver.Leave", func(ctx context.Context, req *network.LeaveRequest) (*empty, error) {
		if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
			return nil, err
		}
		return nil, d.Leave(ctx, req.NetworkID, req.EndpointID)
	})
	registerPorts(r, d)
	handle(r, "NetworkDriver.DiscoverNew", noop[network.DiscoveryNotification])
	handle(r, "NetworkDriver.DiscoverDelete", noop[network.DiscoveryNotification])
	// AllocateNetwork and FreeNetwork are only sent by a swarm manager to
	// global-scope drivers; they stay unregistered (404, "not implemented").
}

func noop[Req any](context.Context, *Req) (*empty, error) { return nil, nil }

// createEndpoint answers with the MAC only when mynet chose it: echoing a
// field the engine filled makes it roll the endpoint back.
func createEndpoint(ctx context.Context, d *driver.Driver, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	var iface driver.Interface
	if req.Interface != nil {
		iface = driver.Interface{Address: req.Interface.Address, AddressIPv6: req.Interface.AddressIPv6, MacAddress: req.Interface.MacAddress}
	}
	mac, err := d.CreateEndpoint(ctx, req.NetworkID, req.EndpointID, iface)
	if err != nil {
		return nil, err
	}
	if mac == "" {
		return &network.CreateEndpointResponse{}, nil
	}
	return &network.CreateEndpointResponse{Interface: &network.EndpointInterface{MacAddress: mac}}, nil
}

// join hands the container end of the veth to the engine, which moves it
// into the sandbox and names it <prefix><N> (eth<N> unless the network has
// container_iface_prefix).
func join(d *driver.Driver, req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	info, err := d.Join(req.NetworkID, req.EndpointID)
	if err != nil {
		return nil, err
	}
	return &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: info.ContainerVeth, DstPrefix: info.IfacePrefix},
		Gateway:       info.Gateway, GatewayIPv6: info.GatewayIPv6,
	}, nil
}

func validateIDs(networkID, endpointID string) error {
	if err := model.ValidateID("network ID", networkID); err != nil {
		return badRequest(err)
	}
	if err := model.ValidateID("endpoint ID", endpointID); err != nil {
		return badRequest(err)
	}
	return nil
}

// RegisterCluster adds Mynet.Cluster, the cluster's hosts and this host's
// cluster networks as report gives them (serve passes the peers agent's
// Report); only in cluster mode, so that a single-host daemon answers 404.
func RegisterCluster[T any](r *Router, report func(context.Context) T) {
	handle(r, "Mynet.Cluster", func(ctx context.Context, _ *empty) (*T, error) {
		v := report(ctx)
		return &v, nil
	})
}
