package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/mynet/mynet/internal/model"
)

// FuzzRequests sends arbitrary bodies to every method, one driver serving
// them all in turn: the router must answer each with a status the engine
// understands and a JSON body, never panic, and leave the state exactly
// what the dataplane holds, with the links mynet did not create untouched.
func FuzzRequests(f *testing.F) {
	methods := []string{
		"NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork", "NetworkDriver.CreateEndpoint",
		"NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
		"NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
		"IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress",
		"NetworkDriver.GwAllocCheck",
	}
	ep := func(eid, iface string) []byte {
		return []byte(`{"NetworkID":"` + id('a') + `","EndpointID":"` + eid + `","Interface":` + iface + `}`)
	}
	seed, _ := json.Marshal(createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptMTU: "1400"}))
	f.Add(uint8(0), seed)
	f.Add(uint8(12), []byte(`{"Options":{"com.docker.network.generic":{"com.docker.network.container_iface_prefix":"lan"}}}`))
	f.Add(uint8(8), []byte(`{"Pool":"10.2.0.0/16","SubPool":"10.2.1.0/24"}`))
	f.Add(uint8(10), []byte(`{"PoolID":"10.2.0.0/16","Address":"10.2.1.9"}`))
	f.Add(uint8(6), []byte(`{"NetworkID":"`+id('a')+`","EndpointID":"`+id('b')+`","Options":{"com.docker.network.portmap":[{"Proto":6,"Port":80}]}}`))
	f.Add(uint8(2), ep(id('b'), `{"Address":"10.1.0.2/24","MacAddress":"zz"}`))
	f.Add(uint8(2), ep(id('b'), `{"Address":"10.1.0.2/24"}`))
	f.Add(uint8(4), []byte(`{"NetworkID":"`+id('a')+`","EndpointID":"`+id('b')+`","SandboxKey":"/var/run/docker/netns/x"}`))
	f.Add(uint8(3), []byte(`{"NetworkID":"`+id('a')+`","EndpointID":"`+id('b')+`"}`))
	f.Add(uint8(2), ep(id('b'), `{"Address":"10.1.0.2/24"}`)) // the same ID again
	// Links that are not mynet's: a bridge name, and the veth names of
	// endpoint eee...
	foreignBridge, _ := json.Marshal(createNetworkReq(id('c'), "10.3.0.0/24", "10.3.0.1/24", map[string]any{OptBridgeName: "br0"}))
	f.Add(uint8(0), foreignBridge)
	template, _ := json.Marshal(createNetworkReq(id('d'), "10.4.0.0/24", "10.4.0.1/24", map[string]any{OptBridgeName: "br%d"}))
	f.Add(uint8(0), template)
	f.Add(uint8(2), ep(id('e'), `{"Address":"10.1.0.3/24"}`))
	f.Add(uint8(1), []byte(`{"NetworkID":"`+id('a')+`"}`))

	h := newHarness(f)
	host, ctr := model.VethNames(id('e'))
	foreign := []string{"lo", "eth0", "docker0", "br0", host, ctr}
	for _, name := range foreign {
		h.dp.Foreign[name] = true
	}
	f.Fuzz(func(t *testing.T, m uint8, body []byte) {
		method := methods[int(m)%len(methods)]
		resp, err := http.Post(h.srv.URL+"/"+method, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		switch resp.StatusCode {
		case 200, 400, 500:
		default:
			t.Fatalf("%s answered %d", method, resp.StatusCode)
		}
		if !json.Valid(raw) {
			t.Fatalf("%s answered non-JSON %q", method, raw)
		}
		if err := h.matchesDataplane(foreign); err != nil {
			t.Fatalf("after %s %q (answered %d %s): %v", method, body, resp.StatusCode, raw, err)
		}
	})
}

// matchesDataplane reports how the state and the fake dataplane differ:
// each network and endpoint of the one must be in the other, built as the
// record says, and the links that are not mynet's must be exactly foreign,
// none of them used.
func (h *harness) matchesDataplane(foreign []string) error {
	d := h.dump()
	h.dp.Mu.Lock()
	defer h.dp.Mu.Unlock()
	var errs []error
	var names []string
	for name := range h.dp.Foreign {
		names = append(names, name)
	}
	if !slices.Equal(slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(foreign))) {
		errs = append(errs, fmt.Errorf("links not created by mynet changed: %v, want %v", names, foreign))
	}
	for _, n := range d.Networks {
		got, ok := h.dp.Networks[n.ID]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("network %s is in the state but not in the dataplane", model.Short(n.ID)))
		case got.Bridge != n.Bridge:
			errs = append(errs, fmt.Errorf("network %s: bridge %s in the dataplane, %s in the state", model.Short(n.ID), got.Bridge, n.Bridge))
		}
	}
	for _, e := range d.Endpoints {
		got, ok := h.dp.Endpoints[e.ID]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("endpoint %s is in the state but not in the dataplane", model.Short(e.ID)))
		case got.NetworkID != e.NetworkID || got.HostVeth != e.HostVeth || got.ContainerVeth != e.ContainerVeth:
			errs = append(errs, fmt.Errorf("endpoint %s: %s/%s/%s in the dataplane, %s/%s/%s in the state", model.Short(e.ID),
				model.Short(got.NetworkID), got.HostVeth, got.ContainerVeth, model.Short(e.NetworkID), e.HostVeth, e.ContainerVeth))
		}
	}
	if len(h.dp.Networks) != len(d.Networks) {
		errs = append(errs, fmt.Errorf("%d networks in the dataplane, %d in the state", len(h.dp.Networks), len(d.Networks)))
	}
	if len(h.dp.Endpoints) != len(d.Endpoints) {
		errs = append(errs, fmt.Errorf("%d endpoints in the dataplane, %d in the state", len(h.dp.Endpoints), len(d.Endpoints)))
	}
	for _, n := range h.dp.Networks {
		if h.dp.Foreign[n.Bridge] {
			errs = append(errs, fmt.Errorf("network %s was built on the foreign link %s", model.Short(n.ID), n.Bridge))
		}
	}
	for _, e := range h.dp.Endpoints {
		if h.dp.Foreign[e.HostVeth] || h.dp.Foreign[e.ContainerVeth] {
			errs = append(errs, fmt.Errorf("endpoint %s was built on a foreign link", model.Short(e.ID)))
		}
	}
	return errors.Join(errs...)
}

// FuzzParseCreateNetwork: option parsing either returns a config that
// satisfies its invariants or an error, for any request.
func FuzzParseCreateNetwork(f *testing.F) {
	seed, _ := json.Marshal(createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptBridgeName: "br0"}))
	f.Add(seed)
	f.Add([]byte(`{"NetworkID":"` + id('a') + `","Options":{"com.docker.network.enable_ipv6":true},"IPv4Data":[{"Pool":"10.0.0.0/8"}],"IPv6Data":[{"Pool":"fd00::/64","Gateway":"fd00::1/64"}]}`))
	f.Add([]byte(`{"NetworkID":"` + id('a') + `","Options":{"com.docker.network.enable_ipv6":true,"com.docker.network.generic":{"com.docker.network.driver.mtu":"1279"}},"IPv4Data":[{"Pool":"127.0.0.0/8","Gateway":"127.0.0.1/8"}],"IPv6Data":[{"Pool":"::ffff:10.0.0.0/120","Gateway":"::ffff:10.0.0.1/120"}]}`))
	f.Add([]byte(`{"NetworkID":"` + id('a') + `","Options":{"com.docker.network.enable_ipv6":true},"IPv4Data":[{"Pool":"224.0.0.0/24","Gateway":"224.0.0.1/24"}],"IPv6Data":[{"Pool":"::/120","Gateway":"::1/120"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req network.CreateNetworkRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		cfg, err := ParseCreateNetwork(&req)
		if err != nil {
			return
		}
		if len(cfg.IPv4) == 0 || cfg.BridgeName == "" || (cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535)) {
			t.Fatalf("accepted an invalid config: %+v", cfg)
		}
		if cfg.EnableIPv6 && (len(cfg.IPv6) == 0 || (cfg.MTU != 0 && cfg.MTU < 1280)) {
			t.Fatalf("accepted an IPv6 network without a subnet or with an MTU under 1280: %+v", cfg)
		}
		for _, s := range append(cfg.IPv4, cfg.IPv6...) {
			if s.Pool != s.Pool.Masked() || (s.Gateway.IsValid() && !s.Pool.Contains(s.Gateway.Addr())) {
				t.Fatalf("accepted subnet %+v", s)
			}
			if s.Pool.Overlaps(netip.MustParsePrefix("::ffff:0:0/96")) {
				t.Fatalf("accepted an IPv4-mapped subnet %+v", s)
			}
			if gw := s.Gateway.Addr(); s.Gateway.IsValid() && (gw.IsLoopback() || gw.IsMulticast() || gw.IsUnspecified()) {
				t.Fatalf("accepted gateway %s", gw)
			}
		}
	})
}
