package driver

import (
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// ModelNetwork is the dataplane's view of a state record, as the driver
// builds it: `mynet doctor` derives the rules a network should have from it.
func ModelNetwork(n *state.Network) model.Network { return toBridgeNetwork(n) }

// ModelEndpoint is the dataplane's view of an endpoint's record, its
// published ports included, as the driver builds it.
func ModelEndpoint(n *state.Network, e *state.Endpoint) model.Endpoint { return toBridgeEndpoint(n, e) }
