package plugin

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

// FuzzRequests sends arbitrary bodies to every method: the router must
// answer each with a status the engine understands and a JSON body, never
// panic, and leave the state consistent enough to keep serving.
func FuzzRequests(f *testing.F) {
	methods := []string{
		"NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork", "NetworkDriver.CreateEndpoint",
		"NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
		"NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
		"IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress",
	}
	seed, _ := json.Marshal(createNetworkReq(id('a'), "10.1.0.0/24", "10.1.0.1/24", map[string]any{OptMTU: "1400"}))
	f.Add(uint8(0), seed)
	f.Add(uint8(8), []byte(`{"Pool":"10.2.0.0/16","SubPool":"10.2.1.0/24"}`))
	f.Add(uint8(10), []byte(`{"PoolID":"10.2.0.0/16","Address":"10.2.1.9"}`))
	f.Add(uint8(6), []byte(`{"NetworkID":"`+id('a')+`","EndpointID":"`+id('b')+`","Options":{"com.docker.network.portmap":[{"Proto":6,"Port":80}]}}`))
	f.Add(uint8(2), []byte(`{"NetworkID":"`+id('a')+`","EndpointID":"`+id('b')+`","Interface":{"Address":"10.1.0.2/24","MacAddress":"zz"}}`))
	h := newHarness(&testing.T{})
	f.Cleanup(h.close)
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
	})
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
