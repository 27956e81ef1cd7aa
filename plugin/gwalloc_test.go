package plugin

import (
	"strings"
	"testing"
)

func TestGwAllocCheck(t *testing.T) {
	h := newHarness(t)
	if out := h.ok("NetworkDriver.GetCapabilities", nil); out["GwAllocChecker"] != true {
		t.Fatalf("GetCapabilities = %v, want GwAllocChecker true", out)
	}
	opts := func(generic map[string]any) map[string]any {
		return map[string]any{"Options": map[string]any{"com.docker.network.enable_ipv6": true, optGeneric: generic}}
	}
	for _, req := range []map[string]any{{}, {"Options": nil}, opts(nil), opts(map[string]any{OptICC: "false", OptIfacePrefix: "en"}),
		// routed keeps the gateway: containers route through it, and
		// Docker's bridge skips only for isolated (GetSkipGwAlloc).
		opts(map[string]any{OptGatewayMode4: "routed", OptGatewayMode6: "routed"})} {
		out := h.ok("NetworkDriver.GwAllocCheck", req)
		if out["SkipIPv4"] != false || out["SkipIPv6"] != false {
			t.Fatalf("GwAllocCheck(%v) = %v, want no skip for either family: the bridge holds both gateways", req, out)
		}
	}
	for _, tc := range []struct {
		name string
		body any
		want string
	}{
		{"unknown option", opts(map[string]any{"x.y": "1"}), `unknown option "x.y"`},
		{"bad value", opts(map[string]any{OptICC: "maybe"}), OptICC},
		{"generic not an object", map[string]any{"Options": map[string]any{optGeneric: "x"}}, "must be an object"},
		{"bad top-level bool", map[string]any{"Options": map[string]any{"com.docker.network.enable_ipv6": "x"}}, "enable_ipv6"},
		{"not JSON", "{", "decode request"},
		{"empty body", "", "empty request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if msg := h.fails("NetworkDriver.GwAllocCheck", tc.body, 400); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q, want it to contain %q", msg, tc.want)
			}
		})
	}
	if len(h.dump().Networks) != 0 {
		t.Fatal("GwAllocCheck created a network")
	}
}
