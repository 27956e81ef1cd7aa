package doctor

// The instance's nftables table against the state.

import (
	"fmt"
	"strings"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
)

// checkNFTRules reports, when mynet's rules are in nftables, what the
// instance's tables lack for the networks and published ports that both
// state reads agree on, from the dataplane's own comparison
// (bridge.NFTGaps). The table is read twice: only a gap both reads show is
// reported, so that a request changing the table meanwhile is not.
func (d *doctor) checkNFTRules(st1, st2 *plugin.Dump) {
	nets := stableNetworks(st1, st2)
	byID := map[string]int{}
	var mnets []model.Network
	for i := range nets {
		byID[nets[i].ID] = i
		mnets = append(mnets, driver.ModelNetwork(&nets[i]))
	}
	var meps []model.Endpoint
	for _, e := range stableEndpoints(st1, st2) {
		if i, ok := byID[e.NetworkID]; ok && len(e.Ports) > 0 {
			meps = append(meps, driver.ModelEndpoint(&nets[i], &e))
		}
	}
	found := 0
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ip", true: "ip6"}[v6]
		first, err1 := bridge.NFTGaps(d.t.Instance, v6, mnets, meps)
		again, err2 := bridge.NFTGaps(d.t.Instance, v6, mnets, meps)
		if err := firstErr(err1, err2); err != nil {
			d.add("nftables_rules", statusSkipped, fmt.Sprintf("read the %s table %s: %v", fam, model.NFTTableName(d.t.Instance), err), "")
			continue
		}
		seen := map[bridge.NFTGap]bool{}
		for _, g := range first {
			seen[g] = true
		}
		byNet := map[string][]string{}
		var order []string
		for _, g := range again {
			if !seen[g] {
				continue
			}
			if _, ok := byNet[g.Network]; !ok {
				order = append(order, g.Network)
			}
			byNet[g.Network] = append(byNet[g.Network], g.What)
		}
		for _, id := range order {
			whose := "what every network shares"
			if id != "" {
				whose = "network " + d.networkName(id)
			}
			found++
			d.add("nftables_rules", statusProblem, fmt.Sprintf("table %s %s, %s: %s", fam, model.NFTTableName(d.t.Instance), whose, strings.Join(byNet[id], "; ")), d.reconcileFix(rebuilds))
		}
	}
	if found == 0 {
		d.add("nftables_rules", statusOK, fmt.Sprintf("mynet's nftables tables hold what %d network%s and their published ports need", len(nets), plural(len(nets))), "")
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
