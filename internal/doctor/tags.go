package doctor

// The doctor's listing of tagged links that the daemon will not start
// with: links of the instance created under another state file (another
// generation), and, when the daemon is down, what its state file says of
// each tagged link. The daemon refuses to start while such links exist,
// so this part needs no daemon: it reads the state file, read-only.

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

func kindName(kind string) string {
	if kind == model.KindEndpoint {
		return "veth of endpoint"
	}
	return "bridge of network"
}

// discardFix is the command that makes the daemon delete every tagged
// object its state does not know, whatever its generation, commented.
func (d *doctor) discardFix() string {
	return d.discardCmd() + "   # once (then remove the flag): deletes all of this instance's links the state does not know; their containers lose their network"
}

func (d *doctor) discardCmd() string {
	cmd := "mynet serve --discard-orphans"
	if d.t.Instance != "mynet" {
		cmd += " --name " + d.t.Instance
	}
	if d.t.StateDir != "" && d.t.StateDir != "/var/lib/mynet" {
		cmd += " --state-dir " + d.t.StateDir
	}
	if d.t.Plugin != "" {
		cmd = "docker plugin set " + d.t.Plugin + " args=--discard-orphans && docker plugin enable " + d.t.Plugin
	}
	return cmd
}

// addForeignLink reports a link tagged by the instance under another
// state file than the one of generation gen.
func (d *doctor) addForeignLink(name string, tag model.Tag, gen string) {
	other := "generation " + tag.Generation
	if tag.Generation == "" {
		other = "the tag of an earlier release"
	}
	this := "a new, empty state"
	if gen != "" {
		this = "the state's generation is " + gen
	}
	d.add("foreign_link", statusProblem,
		fmt.Sprintf("%s is the %s %s under another state file (%s; %s): mynet neither adopts nor deletes it, and refuses to start while it exists; it may carry a running container",
			name, kindName(tag.Kind), model.Short(tag.ID), other, this),
		"ip link del "+name+"   # if no running container needs it\n"+d.discardFix()+"\nor put back the state file of "+other)
}

// checkTaggedOffline lists the instance's tagged links against the state
// file when the daemon does not answer.
func (d *doctor) checkTaggedOffline(sc scan) {
	var names []string
	tags := map[string]model.Tag{}
	for name, l := range sc.links {
		if tag, ok := model.ParseTag(l.alias); ok && tag.Instance == d.t.Instance {
			names = append(names, name)
			tags[name] = tag
		}
	}
	slices.Sort(names)
	if d.t.StateDir == "" {
		return
	}
	path := filepath.Join(d.t.StateDir, state.FileName)
	peek, err := state.ReadOnly(d.t.StateDir)
	switch {
	case errors.Is(err, state.ErrLocked):
		d.add("state_file", statusSkipped, path+" is locked: the daemon is running but does not answer; the tagged links were not checked against it", "")
		return
	case errors.Is(err, fs.ErrNotExist):
		peek.Created = true
	case errors.Is(err, state.ErrUnusable):
		d.add("state_file", statusProblem, err.Error(),
			"cp GOOD-COPY "+path+"   # if you have one: running containers keep their network\n"+
				"mv "+path+" "+path+".bad && "+d.discardCmd()+"   # otherwise: deletes the links listed below (their containers lose their network)")
		for _, name := range names {
			t := tags[name]
			d.add("tagged_link", statusInfo, fmt.Sprintf("%s is the %s %s of this instance (generation %q); the damaged state cannot tell whether it is its own", name, kindName(t.Kind), model.Short(t.ID), t.Generation), "")
		}
		return
	case err != nil:
		d.add("state_file", statusSkipped, "cannot read "+path+": "+err.Error(), "")
		return
	}
	known := map[string]bool{}
	for _, n := range peek.Snapshot.Networks {
		known[model.KindNetwork+":"+n.ID] = true
	}
	for _, e := range peek.Snapshot.Endpoints {
		known[model.KindEndpoint+":"+e.ID] = true
	}
	problems := d.report.Problems
	for _, name := range names {
		t := tags[name]
		switch {
		case peek.Created || t.Generation != peek.Generation:
			d.addForeignLink(name, t, peek.Generation)
		case !known[t.Kind+":"+t.ID]:
			d.add("orphan_link", statusProblem, fmt.Sprintf("%s is the %s %s, which the state does not know: the daemon deletes it when it starts", name, kindName(t.Kind), model.Short(t.ID)), "ip link del "+name)
		}
	}
	if peek.Created {
		// Rules carry no generation: with a new state they are another
		// state's, and the daemon refuses to start.
		own, rules := instanceChains(d.t.Instance), 0
		for _, td := range sc.dumps {
			for _, l := range td.lines {
				if _, _, ok := model.ParseRuleComment(l); ok && own[strings.Fields(l)[1]] {
					rules++
				}
			}
		}
		if rules > 0 {
			d.add("foreign_rules", statusProblem, fmt.Sprintf("%d iptables rule%s in this instance's chains name networks, but the state at %s is new or empty: mynet refuses to start", rules, plural(rules), path), d.discardFix())
		}
	}
	if d.report.Problems == problems {
		d.add("state_file", statusOK, fmt.Sprintf("%s (generation %s) accounts for the %d link%s tagged by this instance", path, peek.Generation, len(names), plural(len(names))), "")
	}
}
