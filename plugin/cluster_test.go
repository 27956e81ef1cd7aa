package plugin

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
)

// ConnectivityScope is global in cluster mode only; Scope stays local.
func TestClusterCapabilities(t *testing.T) {
	for _, tc := range []struct {
		cluster bool
		want    string
	}{{false, "local"}, {true, "global"}} {
		h := newHarnessWith(t, func(c *driver.Config) {
			if tc.cluster {
				c.Cluster = &driver.ClusterConfig{Store: nopCluster{}, HostID: "a",
					VXLAN: model.VXLAN{Local: netip.MustParseAddr("198.19.77.10"), UnderlayMTU: 1500}}
			}
		})
		out := h.ok("NetworkDriver.GetCapabilities", nil)
		if out["Scope"] != "local" || out["ConnectivityScope"] != tc.want {
			t.Errorf("cluster mode %v: GetCapabilities = %v, want Scope local, ConnectivityScope %s", tc.cluster, out, tc.want)
		}
	}
}

// mynet.cluster is parsed and its name checked; without cluster mode the
// create is refused with how to turn it on.
func TestClusterOption(t *testing.T) {
	h := newHarness(t)
	msg := h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptCluster: "app/net"}), 400)
	if !strings.Contains(msg, "mynet.cluster") || !strings.Contains(msg, "character '/'") {
		t.Errorf("bad cluster name: %s", msg)
	}
	p := h.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "local", "Pool": "10.1.0.0/24"})
	msg = h.fails("NetworkDriver.CreateNetwork", createNetworkReq(id('a'), p["Pool"].(string), "10.1.0.1/24", map[string]any{OptCluster: "appnet"}), 400)
	if !strings.Contains(msg, "start mynet serve with --cluster-store") {
		t.Errorf("cluster network without cluster mode: %s", msg)
	}
	if n := len(h.dump().Networks); n != 0 {
		t.Errorf("%d networks after refused creates", n)
	}
}

// nopCluster is a cluster store that is never called.
type nopCluster struct{}

func (nopCluster) CreateOrJoinNetwork(context.Context, model.ClusterSpec, string) (model.ClusterNetwork, error) {
	panic("not called")
}
func (nopCluster) LeaveNetwork(context.Context, string, string) (bool, error) { panic("not called") }
func (nopCluster) ClaimAddress(context.Context, string, netip.Addr, model.EndpointAdvert) (netip.Addr, error) {
	panic("not called")
}
func (nopCluster) ReleaseAddress(context.Context, string, netip.Addr, string) error {
	panic("not called")
}
