package doctor

// Which instance and which iptables backend the checks look at.

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
)

// detectInstance reads the instance name from the tags of the bridges of
// the daemon's networks: a managed plugin's --name is not visible from here.
func (d *doctor) detectInstance(st *plugin.Dump, sc scan) {
	if st == nil || sc.links == nil {
		return
	}
	for _, n := range st.Networks {
		l, ok := sc.links[n.Bridge]
		if !ok {
			continue
		}
		tag, ok := model.ParseTag(l.alias)
		inst := tag.Instance
		if !ok || tag.Kind != model.KindNetwork || tag.ID != n.ID || inst == d.t.Instance || !cli.ValidName(inst) {
			continue
		}
		if d.t.InstanceKnown {
			d.add("instance", statusProblem, fmt.Sprintf("the daemon's bridges are tagged for instance %q, not %q: the checks below look for the wrong tags and chains", inst, d.t.Instance), "mynet doctor --socket "+d.t.Socket+" --instance "+inst)
			return
		}
		d.add("instance", statusInfo, fmt.Sprintf("the daemon's bridges are tagged for instance %q: checking its tags and chains", inst), "")
		d.t.Instance, d.report.Instance = inst, inst
		return
	}
}

// checkBackend compares the backend holding mynet's chains (or, before it
// made any, the one of the iptables on PATH) with the one holding Docker's,
// and reports the FORWARD policy. It returns mynet's backend, "" when the
// rules could not be read.
func (d *doctor) checkBackend(ctx context.Context, sc scan) string {
	if len(sc.dumps) == 0 {
		return ""
	}
	own := instanceChains(d.t.Instance)
	dockerIn, mynetIn := map[string]bool{}, map[string]bool{}
	for _, td := range sc.dumps {
		if td.family == "iptables" && hasChain(td.lines, isDockerChain) {
			dockerIn[td.backend] = true
		}
		if hasChain(td.lines, func(c string) bool { return own[c] }) {
			mynetIn[td.backend] = true
		}
	}
	mine, how := d.mynetBackend(ctx, sc, mynetIn, dockerIn)
	var docker []string
	for _, b := range []string{backendNFT, backendLegacy} {
		if dockerIn[b] {
			docker = append(docker, b)
		}
	}
	switch {
	case len(docker) == 0:
		d.add("iptables_backend", statusInfo, fmt.Sprintf("no Docker chains in nf_tables or legacy iptables: dockerd is not running here, or runs with --iptables=false; mynet uses %s (%s)", cli.OrDash(mine), how), "")
	case mine != "" && !dockerIn[mine]:
		want := docker[0]
		suffix := "nft"
		if want == backendLegacy {
			suffix = "legacy"
		}
		d.add("iptables_backend", statusProblem, fmt.Sprintf("mynet uses %s (%s) but Docker's rules are in %s: Docker's chains and mynet's do not see each other, so the isolation from Docker's networks and the DOCKER-USER hook do not work", mine, how, want),
			fmt.Sprintf("update-alternatives --set iptables /usr/sbin/iptables-%s && update-alternatives --set ip6tables /usr/sbin/ip6tables-%s && %s", suffix, suffix, d.t.Restart))
	default:
		d.add("iptables_backend", statusOK, fmt.Sprintf("mynet and Docker both use %s (%s)", mine, how), "")
		if len(docker) == 2 {
			d.add("iptables_backend", statusInfo, "Docker chains exist in both nf_tables and legacy iptables: one set is left over from an earlier backend", "")
		}
	}
	d.checkForwardPolicy(sc, mine)
	return mine
}

// mynetBackend returns the backend of mynet's chains and how it was
// found, reporting chains left over in the other backend.
func (d *doctor) mynetBackend(ctx context.Context, sc scan, mynetIn, dockerIn map[string]bool) (mine, how string) {
	switch {
	case len(mynetIn) == 2:
		other := backendLegacy
		if !dockerIn[backendNFT] && dockerIn[backendLegacy] {
			other = backendNFT
		}
		d.add("iptables_backend", statusProblem, "mynet's chains exist in both nf_tables and legacy iptables: the "+other+" ones are left over from a backend switch and no longer maintained",
			d.chainRemovalFix(sc, other))
		mine, how = backendNFT, "its chains"
		if other == backendNFT {
			mine = backendLegacy
		}
	case len(mynetIn) == 1:
		for b := range mynetIn {
			mine = b
		}
		how = "its chains are there"
	default:
		if p, err := exec.LookPath("iptables"); err == nil {
			mine, how = iptablesBackend(ctx, p), "the iptables on PATH, which mynet uses"
		}
	}
	return mine, how
}

// checkForwardPolicy reports the FORWARD policy of the backend that
// matters.
func (d *doctor) checkForwardPolicy(sc scan, mine string) {
	for _, td := range sc.dumps {
		if td.family != "iptables" || td.table != "filter" || (mine != "" && td.backend != mine) {
			continue
		}
		for _, l := range td.lines {
			if policy, ok := strings.CutPrefix(l, "-P FORWARD "); ok {
				if policy == "DROP" {
					d.add("forward_policy", statusInfo, "FORWARD policy is DROP (Docker sets it): fine, mynet accepts its own traffic explicitly", "")
				} else {
					d.add("forward_policy", statusInfo, "FORWARD policy is "+policy, "")
				}
				break
			}
		}
		break
	}
}

// chainRemovalFix deletes an instance's chains, and the jumps into them, in
// one backend.
func (d *doctor) chainRemovalFix(sc scan, backend string) string {
	own := instanceChains(d.t.Instance)
	var jumps, flushes, deletes []string
	for _, td := range sc.dumps {
		if td.backend != backend {
			continue
		}
		for _, l := range td.lines {
			if rest, ok := strings.CutPrefix(l, "-A "); ok {
				chain, _, _ := strings.Cut(rest, " ")
				target := jumpTarget(l)
				if own[target] && !own[chain] {
					jumps = append(jumps, td.bin+" -t "+td.table+" -D "+rest)
				}
			}
			if c, ok := strings.CutPrefix(l, "-N "); ok && own[c] {
				flushes = append(flushes, td.bin+" -t "+td.table+" -F "+c)
				deletes = append(deletes, td.bin+" -t "+td.table+" -X "+c)
			}
		}
	}
	return strings.Join(slices.Concat(jumps, flushes, deletes), "\n")
}

func jumpTarget(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}
