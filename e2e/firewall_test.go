package e2e

import (
	"os"
	"regexp"
	"strings"

	"github.com/mynet/mynet/internal/model"
)

// firewallEnv chooses the firewall backend of the suite's plugin
// (serve --firewall); unset, the plugin's default (auto). The engine
// sid-nft, whose dockerd writes no firewall rule, sets it to nftables
// unless it is set.
const firewallEnv = "MYNET_E2E_FIREWALL"

// engineFirewall is the backend the matrix gives an engine's run when
// MYNET_E2E_FIREWALL does not say.
var engineFirewall = map[string]string{"sid-nft": model.FirewallNFTables}

// suiteFirewall is the backend the plugin is told to use, or "".
func suiteFirewall() string { return os.Getenv(firewallEnv) }

// firewallArgs are the plugin's --firewall flag, when the suite sets one.
func firewallArgs() []string {
	if f := suiteFirewall(); f != "" {
		return []string{"--firewall", f}
	}
	return nil
}

// usesNFT reports whether the plugin keeps its rules in nftables: the
// leak checks then read its tables rather than iptables.
func usesNFT() bool { return suiteFirewall() == model.FirewallNFTables }

var nftCounters = regexp.MustCompile(` counter packets \d+ bytes \d+`)

// rulesets returns the firewall's rules of the backend in use, by source
// ("iptables", "ip6tables"; or "nft ip", "nft ip6": the plugin's tables,
// without counters), as one text each.
func rulesets() (map[string]string, error) {
	out := map[string]string{}
	if !usesNFT() {
		for _, tool := range []string{"iptables", "ip6tables"} {
			// Without -c, rules carry no counters; chain declarations still do.
			text, err := run(tool + "-save")
			if err != nil {
				return nil, err
			}
			out[tool] = text
		}
		return out, nil
	}
	name := model.DefaultInstance
	if env.plugin != nil {
		name = env.plugin.name
	}
	for _, family := range []string{"ip", "ip6"} {
		text, err := run("nft", "list", "table", family, model.NFTTableName(name))
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				text = "" // no network of the family: no table
			} else {
				return nil, err
			}
		}
		out["nft "+family] = nftCounters.ReplaceAllString(text, "")
	}
	return out, nil
}

// noDockerFirewall says why Docker's own rules are missing on this engine,
// or "": sid-nft's dockerd writes none, so its bridge driver is no
// reference for isolation or direct-routing protection, and mynet cannot
// tell a bridge Docker named with com.docker.network.bridge.name from any
// other bridge (it knows Docker's bridges from Docker's rules, under
// either backend, and by their default names).
func noDockerFirewall() string {
	if currentEngine() == "sid-nft" {
		return "dockerd runs with --iptables=false --ip6tables=false and writes no firewall rule"
	}
	return ""
}
