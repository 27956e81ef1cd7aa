package doctor

// The host's sysctls mynet depends on.

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// checkSysctls checks forwarding and br_netfilter.
func (d *doctor) checkSysctls(st *plugin.Dump) {
	switch v, err := d.sysctl("net/ipv4/ip_forward"); {
	case err != nil:
		d.add("ip_forward", statusProblem, "cannot read net.ipv4.ip_forward: "+err.Error(), "")
	case v != "1":
		d.add("ip_forward", statusProblem, "net.ipv4.ip_forward = "+v+": containers cannot reach beyond their bridge (mynet turns it on at start and at each network create; something turned it off since)", "sysctl -w net.ipv4.ip_forward=1")
	default:
		d.add("ip_forward", statusOK, "net.ipv4.ip_forward = 1", "")
	}
	keys := []string{"bridge-nf-call-iptables"}
	if st != nil && slices.ContainsFunc(st.Networks, func(n state.Network) bool { return len(n.IPv6) > 0 }) {
		keys = append(keys, "bridge-nf-call-ip6tables")
	}
	for _, k := range keys {
		v, err := d.sysctl("net/bridge/" + k)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			d.add("br_netfilter", statusProblem, "the br_netfilter module is not loaded: traffic between containers of one bridge bypasses iptables, so icc=false is not enforced (mynet refuses such networks)", "modprobe br_netfilter")
			return
		case err != nil:
			d.add("br_netfilter", statusProblem, "cannot read net.bridge."+k+": "+err.Error(), "")
		case v != "1":
			d.add("br_netfilter", statusProblem, "net.bridge."+k+" = "+v+": traffic between containers of one bridge bypasses iptables, so icc=false is not enforced", "sysctl -w net.bridge."+k+"=1")
		default:
			d.add("br_netfilter", statusOK, "br_netfilter loaded, net.bridge."+k+" = 1", "")
		}
	}
}

func (d *doctor) sysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.procSys, key))
	return strings.TrimSpace(string(b)), err
}
