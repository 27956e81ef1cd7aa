package plugin

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
)

// Docker's option keys. The -o keys are those of Docker's own bridge driver,
// so `-d bridge` can be swapped for `-d mynet` without changing them.
const (
	optGeneric    = "com.docker.network.generic"
	optEnableIPv6 = "com.docker.network.enable_ipv6"
	optEnableIPv4 = "com.docker.network.enable_ipv4" // Docker 28+
	optInternal   = "com.docker.network.internal"

	OptBridgeName    = driver.OptBridgeName
	OptMTU           = "com.docker.network.driver.mtu"
	OptICC           = "com.docker.network.bridge.enable_icc"
	OptMasquerade    = "com.docker.network.bridge.enable_ip_masquerade"
	OptHostBinding   = "com.docker.network.bridge.host_binding_ipv4"
	OptIfacePrefix   = "com.docker.network.container_iface_prefix"
	OptGatewayMode4  = "com.docker.network.bridge.gateway_mode_ipv4"
	OptGatewayMode6  = "com.docker.network.bridge.gateway_mode_ipv6"
	OptTrustedIfaces = "com.docker.network.bridge.trusted_host_interfaces" // Docker 28.2+
	OptInhibitIPv4   = "com.docker.network.bridge.inhibit_ipv4"
	// OptAntiSpoofing is mynet's own: Docker's bridge has no such filter.
	OptAntiSpoofing = "mynet.anti_spoofing"
	// OptCluster makes the network one of the cluster (mynet serve
	// --cluster-store): the same name and spec on every host.
	OptCluster = "mynet.cluster"
)

// supportedOptions are the -o keys mynet accepts, with their documentation.
var supportedOptions = map[string]string{
	OptBridgeName:    "bridge interface name (default mn-<first 12 characters of the network ID>)",
	OptMTU:           "MTU of the bridge and of every veth, 68-65535 (default: kernel default, 1500)",
	OptICC:           "containers of the network may reach each other: true or false (default true)",
	OptMasquerade:    "masquerade egress to the host's address: true or false (default true)",
	OptHostBinding:   "default host IPv4 address for published ports (default: all)",
	OptIfacePrefix:   "prefix of the interface name in containers, letters and digits (default eth)",
	OptGatewayMode4:  "nat (default): only published ports are reachable from outside the host, through the host's addresses; nat-unprotected: containers' IPv4 addresses may also be routed to directly, all ports; routed: no NAT, published container ports (and ICMP) open at the containers' IPv4 addresses, host ports ignored; isolated (internal networks only): no address of the family on the bridge",
	OptGatewayMode6:  "as gateway_mode_ipv4, for the containers' IPv6 addresses",
	OptTrustedIfaces: "host interfaces, separated by ':', from which published container ports are reachable at the containers' addresses in gateway mode nat (a trailing + matches as in iptables)",
	OptInhibitIPv4:   "the bridge gets no IPv4 address, the operator manages it: true or false (default false)",
	OptAntiSpoofing:  "containers may send only from their own MAC and addresses: true or false (default true)",
	OptCluster:       "name of the cluster network this network is on this host (mynet serve --cluster-store): the same name, --subnet and options on every host; needs --ipam-driver mynet",
}

// NetworkConfig is a CreateNetwork request parsed and validated: everything
// after this point is typed, and nothing downstream reads Docker's maps.
type NetworkConfig = driver.NetworkConfig

// SubnetConfig is one IPAM entry of the request.
type SubnetConfig = driver.SubnetConfig

// ParseCreateNetwork turns the engine's request into a NetworkConfig,
// rejecting anything mynet would otherwise have to guess about.
func ParseCreateNetwork(req *network.CreateNetworkRequest) (NetworkConfig, error) {
	cfg := NetworkConfig{ID: req.NetworkID, ICC: true, Masquerade: true, AntiSpoofing: true}
	if err := model.ValidateID("network ID", req.NetworkID); err != nil {
		return cfg, badRequest(err)
	}
	if err := parseTopLevel(req.Options, &cfg); err != nil {
		return cfg, err
	}
	generic, err := genericOptions(req.Options)
	if err != nil {
		return cfg, err
	}
	if err := parseGeneric(generic, &cfg); err != nil {
		return cfg, err
	}
	if cfg.BridgeName == "" {
		cfg.BridgeName = model.BridgeName(req.NetworkID)
	}
	if err := checkOptions(cfg); err != nil {
		return cfg, err
	}
	if cfg.IPv4, err = parseIPAMData("IPv4Data", req.IPv4Data, false); err != nil {
		return cfg, err
	}
	if err := checkIPv4(cfg); err != nil {
		return cfg, err
	}
	if cfg.EnableIPv6 {
		if cfg.IPv6, err = parseIPAMData("IPv6Data", req.IPv6Data, true); err != nil {
			return cfg, err
		}
		if err := checkIPv6(cfg); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// checkIPv4 checks the IPv4 side against enable_ipv4 (Docker 28's
// --ipv4=false, an IPv6-only network), as Docker's bridge does in
// CreateNetwork: a network needs one of the families, and the IPv4 subnet
// the engine sends must agree with the flag.
func checkIPv4(cfg NetworkConfig) error {
	switch {
	case cfg.EnableIPv4 && len(cfg.IPv4) == 0:
		return badRequestf("network has no IPv4 subnet: mynet needs an IPAM driver that assigns one (not --ipam-driver null), or, with Docker 28 or later, an IPv6-only network (--ipv4=false --ipv6)")
	case !cfg.EnableIPv4 && len(cfg.IPv4) > 0:
		return badRequestf("option %s is false but IPv4Data has the subnet %s: the engine and the option disagree; leave --ipv4 on to use the subnet, or give no IPv4 subnet", optEnableIPv4, cfg.IPv4[0].Pool)
	}
	return nil
}

// checkOptions checks the options against each other, before any IPAM
// data is looked at, so GwAllocCheck refuses what CreateNetwork would.
// Gateway mode isolated is refused on a network with a way out, as
// Docker's bridge does (parseNetworkOptions): isolated takes the gateway
// away, which only an internal network does without.
func checkOptions(cfg NetworkConfig) error {
	switch {
	case !cfg.EnableIPv4 && !cfg.EnableIPv6:
		return badRequestf("options %s and %s are both false: a network needs IPv4 or IPv6; add --ipv6, or leave --ipv4 on", optEnableIPv4, optEnableIPv6)
	case !cfg.EnableIPv4 && cfg.HostBinding.IsValid():
		return badRequestf("option %s is %s but the network has no IPv4 (--ipv4=false): no port could be published on it; leave the option out, or --ipv4 on", OptHostBinding, cfg.HostBinding)
	}
	for _, m := range []struct{ key, mode string }{{OptGatewayMode4, cfg.GatewayMode4}, {OptGatewayMode6, cfg.GatewayMode6}} {
		if m.mode == driver.GatewayIsolated && !cfg.Internal {
			return badRequestf("option %s: isolated can only be used for an internal network; add --internal, or use nat", m.key)
		}
	}
	return nil
}

// checkIPv6 refuses an IPv6 network mynet could only half build. IPv6
// subnets come from the IPAM driver, which the engine asks for one with
// --ipv6 (mynet's own picks a /64 of ipam.DefaultIPv6): none means the
// IPAM driver gave none, and one made up here would put a gateway on the
// bridge from which the engine never hands containers an address.
func checkIPv6(cfg NetworkConfig) error {
	if len(cfg.IPv6) == 0 {
		return badRequestf("option %s is true but IPv6Data is empty: the IPAM driver gave no IPv6 subnet; give one (--ipv6 --subnet fd00:1::/64), or use mynet's IPAM (--ipam-driver mynet), which picks a /64, or leave --ipv6 off", optEnableIPv6)
	}
	if cfg.MTU != 0 && cfg.MTU < minIPv6MTU {
		return badRequestf("option %s: %d is below %d, the least MTU IPv6 allows (RFC 8200); use %d or more, or leave --ipv6 off", OptMTU, cfg.MTU, minIPv6MTU, minIPv6MTU)
	}
	return nil
}

// minIPv6MTU is the least link MTU IPv6 allows: the kernel removes IPv6
// from an interface whose MTU drops below it.
const minIPv6MTU = 1280

// ipv4Mapped is ::ffff:0:0/96, IPv4 addresses written as IPv6 ones: a
// subnet there would mean IPv4 to the kernel.
var ipv4Mapped = netip.MustParsePrefix("::ffff:0:0/96")

// specialSpace names the kind of address space no network subnet may
// overlap, or "".
func specialSpace(p netip.Prefix) string {
	for _, s := range []struct {
		prefix netip.Prefix
		what   string
	}{
		{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
		{netip.MustParsePrefix("::1/128"), "loopback"},
		{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
		{netip.MustParsePrefix("ff00::/8"), "multicast"},
	} {
		if p.Overlaps(s.prefix) {
			return s.what
		}
	}
	return ""
}

// checkGateway refuses gateways the bridge cannot hold as its address,
// or that no container could route through.
func checkGateway(pool netip.Prefix, gw netip.Addr) error {
	switch {
	case gw.IsLoopback():
		return errors.New("is a loopback address")
	case gw.IsMulticast():
		return errors.New("is a multicast address")
	case gw.IsUnspecified():
		return errors.New("is the unspecified address")
	}
	if what := ipam.ReservedHost(pool, gw); what != "" {
		return fmt.Errorf("is the %s address of %s", what, pool)
	}
	return nil
}

// parseTopLevel reads the engine's own keys. Keys the engine may add in
// later versions are ignored here, unlike -o keys, which the user typed.
func parseTopLevel(opts map[string]any, cfg *NetworkConfig) error {
	var err error
	if cfg.EnableIPv6, err = boolOption(opts, optEnableIPv6, false); err != nil {
		return err
	}
	if cfg.Internal, err = boolOption(opts, optInternal, false); err != nil {
		return err
	}
	// Docker 28 sends enable_ipv4 always, false for --ipv4=false; older
	// engines never, and every network of theirs has IPv4.
	cfg.EnableIPv4, err = boolOption(opts, optEnableIPv4, true)
	return err
}

func genericOptions(opts map[string]any) (map[string]string, error) {
	raw, ok := opts[optGeneric]
	if !ok || raw == nil {
		return nil, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, badRequest(fmt.Errorf("option %s must be an object, got %T", optGeneric, raw))
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil, badRequest(fmt.Errorf("option %s must be a string, got %T", k, v))
		}
		out[k] = s
	}
	return out, nil
}

func parseGeneric(opts map[string]string, cfg *NetworkConfig) error {
	for k, v := range opts {
		switch k {
		case OptBridgeName:
			if err := model.ValidateIfName(v); err != nil {
				return badRequest(fmt.Errorf("option %s: %w", k, err))
			}
			cfg.BridgeName = v
		case OptMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil || mtu < 68 || mtu > 65535 {
				return badRequest(fmt.Errorf("option %s: %q is not an MTU; use a number from 68 to 65535", k, v))
			}
			cfg.MTU = mtu
		case OptICC, OptMasquerade, OptAntiSpoofing, OptInhibitIPv4:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return badRequest(fmt.Errorf("option %s: %q is not a boolean; use true or false", k, v))
			}
			switch k {
			case OptICC:
				cfg.ICC = b
			case OptMasquerade:
				cfg.Masquerade = b
			case OptInhibitIPv4:
				cfg.InhibitIPv4 = b
			default:
				cfg.AntiSpoofing = b
			}
		case OptHostBinding:
			a, err := netip.ParseAddr(v)
			if err != nil || !a.Is4() {
				return badRequest(fmt.Errorf("option %s: %q is not an IPv4 address", k, v))
			}
			if err := hostAddress(a); err != nil {
				return badRequestf("option %s: %s %w", k, a, err)
			}
			cfg.HostBinding = a
		case OptGatewayMode4, OptGatewayMode6:
			mode, err := gatewayMode(k, v)
			if err != nil {
				return err
			}
			if k == OptGatewayMode4 {
				cfg.GatewayMode4 = mode
			} else {
				cfg.GatewayMode6 = mode
			}
		case OptTrustedIfaces:
			names, err := trustedInterfaces(k, v)
			if err != nil {
				return err
			}
			cfg.TrustedInterfaces = names
		case OptCluster:
			if err := model.ValidateClusterName("option "+k, v); err != nil {
				return badRequest(err)
			}
			cfg.Cluster = v
		case OptIfacePrefix:
			if err := model.ValidateIfacePrefix(v); err != nil {
				return badRequestf("option %s: %w", k, err)
			}
			cfg.IfacePrefix = v
		default:
			return badRequest(fmt.Errorf("unknown option %q; mynet supports: %s", k, supportedList()))
		}
	}
	return nil
}

// gatewayMode accepts Docker's four modes: nat and nat-unprotected, which
// differ only in the protection from direct routing, routed, and isolated
// (internal networks only, see checkModes).
func gatewayMode(k, v string) (string, error) {
	switch v {
	case "nat":
		return "", nil
	case driver.GatewayNATUnprotected, driver.GatewayRouted, driver.GatewayIsolated:
		return v, nil
	}
	return "", badRequestf("option %s: %q is not a gateway mode; use nat, nat-unprotected, routed or isolated (internal networks)", k, v)
}

// trustedInterfaces splits trusted_host_interfaces at ':' as Docker's
// bridge does (strings.FieldsFunc: empty names between colons are
// skipped) and checks each name, since each becomes an iptables -i.
func trustedInterfaces(k, v string) ([]string, error) {
	names := strings.FieldsFunc(v, func(r rune) bool { return r == ':' })
	for _, name := range names {
		if err := model.ValidateTrustedInterface(name); err != nil {
			return nil, badRequestf("option %s: %w; give interface names separated by ':', e.g. eth1:vxlan.1", k, err)
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

func supportedList() string {
	keys := make([]string, 0, len(supportedOptions))
	for k := range supportedOptions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// boolOption reads a top-level option that the engine sends as a JSON bool;
// a string form ("true") is accepted too, as some engine versions send it.
func boolOption(opts map[string]any, key string, def bool) (bool, error) {
	v, ok := opts[key]
	if !ok || v == nil {
		return def, nil
	}
	switch b := v.(type) {
	case bool:
		return b, nil
	case string:
		if parsed, err := strconv.ParseBool(b); err == nil {
			return parsed, nil
		}
	}
	return def, badRequest(fmt.Errorf("option %s: %v is not a boolean; use true or false", key, v))
}

func parseIPAMData(field string, data []*network.IPAMData, v6 bool) ([]SubnetConfig, error) {
	var out []SubnetConfig
	for i, d := range data {
		if d == nil {
			continue
		}
		pool, err := netip.ParsePrefix(d.Pool)
		if err != nil {
			return nil, badRequest(fmt.Errorf("%s[%d].Pool %q: %w", field, i, d.Pool, err))
		}
		if pool.Addr().Is6() != v6 || pool.Bits() == 0 {
			return nil, badRequest(fmt.Errorf("%s[%d].Pool %s is not a usable %s subnet", field, i, pool, family(v6)))
		}
		if pool != pool.Masked() {
			return nil, badRequest(fmt.Errorf("%s[%d].Pool %s has host bits set; use %s", field, i, pool, pool.Masked()))
		}
		if v6 && pool.Overlaps(ipv4Mapped) {
			return nil, badRequestf("%s[%d].Pool %s overlaps the IPv4-mapped range %s; give IPv4 subnets as IPv4 (--subnet 10.1.0.0/24) and a real IPv6 subnet here", field, i, pool, ipv4Mapped)
		}
		s := SubnetConfig{Pool: pool}
		if d.Gateway != "" {
			gw, err := netip.ParsePrefix(d.Gateway)
			if err != nil {
				return nil, badRequest(fmt.Errorf("%s[%d].Gateway %q: %w", field, i, d.Gateway, err))
			}
			if !pool.Contains(gw.Addr()) {
				return nil, badRequest(fmt.Errorf("%s[%d].Gateway %s is outside the subnet %s", field, i, gw.Addr(), pool))
			}
			if err := checkGateway(pool, gw.Addr()); err != nil {
				return nil, badRequestf("%s[%d].Gateway %s %w; give a unicast host address of %s (--gateway)", field, i, gw.Addr(), err, pool)
			}
			s.Gateway = netip.PrefixFrom(gw.Addr(), pool.Bits())
		}
		if what := specialSpace(pool); what != "" {
			return nil, badRequestf("%s[%d].Pool %s overlaps %s address space; give a unicast subnet (--subnet)", field, i, pool, what)
		}
		for _, prev := range out {
			if prev.Pool.Overlaps(pool) {
				return nil, badRequest(fmt.Errorf("%s: subnets %s and %s overlap", field, prev.Pool, pool))
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}
