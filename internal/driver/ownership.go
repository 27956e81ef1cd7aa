package driver

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// OwnedKernel is what ClaimObjects needs of the dataplane.
type OwnedKernel interface {
	TaggedLinks() ([]model.TaggedLink, error)
	HasRules() (bool, error)
	Retag(name string, old model.Tag) error
	RemoveTagged(name string, t model.Tag) error
}

// ClaimStore is what ClaimObjects needs of the state store; state.Store
// implements it.
type ClaimStore interface {
	Path() string
	Generation() string
	// Created: the file is new or emptied; Upgraded: it is of an earlier
	// release; Claimed clears both once the kernel was checked.
	Created() bool
	Upgraded() bool
	Claimed() error
}

// ClaimObjects runs before the startup reconcile, which deletes the tagged
// objects the state does not know, and makes sure it deletes only objects
// this state created. Links of this instance tagged with another
// generation (or, after a state loss, any rules of this instance) belong to
// a state file that was lost, moved aside or replaced; they may carry
// running containers, so mynet refuses to start rather than adopt or delete
// them, unless the operator said --discard-orphans; the error then wraps
// state.ErrUnusable. A file of the previous release, which decoded fully,
// first gets its links retagged.
func ClaimObjects(log *slog.Logger, store ClaimStore, snap state.Snapshot, k OwnedKernel, discard bool) error {
	links, err := k.TaggedLinks()
	if err != nil {
		return fmt.Errorf("check the ownership of tagged links: %w", err)
	}
	if store.Upgraded() {
		n := 0
		for _, l := range links {
			if l.Tag.Generation == "" {
				if err := k.Retag(l.Name, l.Tag); err != nil {
					return fmt.Errorf("upgrade the tag of %s: %w", l.Name, err)
				}
				n++
			}
		}
		log.Info("state of an earlier release: its links now carry the state's generation", "generation", store.Generation(), "links", n)
		if links, err = k.TaggedLinks(); err != nil {
			return fmt.Errorf("check the ownership of tagged links: %w", err)
		}
	}
	known := map[string]bool{}
	for _, n := range snap.Networks {
		known[model.KindNetwork+":"+n.ID] = true
	}
	for _, e := range snap.Endpoints {
		known[model.KindEndpoint+":"+e.ID] = true
	}
	var foreign []model.TaggedLink
	for _, l := range links {
		if l.Tag.Generation != store.Generation() {
			foreign = append(foreign, l)
		}
	}
	rules := false
	if store.Created() {
		// Rules carry no generation: those of a new state's instance can
		// only be another state's.
		if rules, err = k.HasRules(); err != nil {
			return fmt.Errorf("check for rules of this instance: %w", err)
		}
	}
	if len(foreign) > 0 || rules {
		if !discard {
			return foreignObjectsError(store, foreign, rules)
		}
		if err := discardForeign(log, k, known, foreign, rules); err != nil {
			return err
		}
	}
	return store.Claimed()
}

// discardForeign is --discard-orphans: the links of other generations that
// the state describes are adopted, the others deleted; rules are the
// startup reconcile's, which deletes those of unknown networks.
func discardForeign(log *slog.Logger, k OwnedKernel, known map[string]bool, foreign []model.TaggedLink, rules bool) error {
	for _, l := range foreign {
		var err error
		if known[l.Tag.Kind+":"+l.Tag.ID] {
			log.Warn("--discard-orphans: adopting a link of another state generation that this state describes", "link", l.Name, "tag", l.Tag.String())
			err = k.Retag(l.Name, l.Tag)
		} else {
			log.Warn("--discard-orphans: deleting a link this state does not know", "link", l.Name, "tag", l.Tag.String())
			err = k.RemoveTagged(l.Name, l.Tag)
		}
		if err != nil {
			return err
		}
	}
	if rules {
		log.Warn("--discard-orphans: the startup reconcile deletes the rules of networks this state does not know")
	}
	return nil
}

func foreignObjectsError(store ClaimStore, foreign []model.TaggedLink, rules bool) error {
	var what []string
	for i, l := range foreign {
		if i == 8 {
			what = append(what, fmt.Sprintf("and %d more", len(foreign)-i))
			break
		}
		gen := "generation " + l.Tag.Generation
		if l.Tag.Generation == "" {
			gen = "an earlier release's tag"
		}
		kind := "network"
		if l.Tag.Kind == model.KindEndpoint {
			kind = "endpoint"
		}
		what = append(what, fmt.Sprintf("%s (%s %s, %s)", l.Name, kind, model.Short(l.Tag.ID), gen))
	}
	if rules {
		what = append(what, "iptables or nftables rules in this instance's chains")
	}
	why := "links tagged by this instance under another state file"
	if store.Created() {
		why = "a new, empty state, but the kernel holds objects of this instance"
	}
	return fmt.Errorf("%w %s (generation %s): %s: %s. They may carry running containers, so mynet adopts and deletes nothing. "+
		"If the state file was lost or replaced, stop here and put the original back; "+
		"to keep this state and delete those objects (their containers lose their network), run mynet serve --discard-orphans once; "+
		"mynet doctor lists them; see \"Recovering the state\" in the README",
		state.ErrUnusable, store.Path(), store.Generation(), why, strings.Join(what, ", "))
}
