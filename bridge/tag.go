package bridge

import (
	"fmt"

	"github.com/mynet/mynet/internal/model"
)

func (d *Dataplane) tag(kind, id string) string {
	return model.Tag{Instance: d.instance, Generation: d.generation, Kind: kind, ID: id}.String()
}

// parseTag accepts only the tags of this instance and generation: the
// objects this state created, the only ones it may delete as orphans.
func (d *Dataplane) parseTag(alias string) (kind, id string, ok bool) {
	t, ok := model.ParseTag(alias)
	if !ok || t.Instance != d.instance || t.Generation != d.generation {
		return "", "", false
	}
	return t.Kind, t.ID, true
}

// TaggedLinks lists the links tagged by this instance, whatever their
// generation, from one link dump.
func (d *Dataplane) TaggedLinks() ([]model.TaggedLink, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	var out []model.TaggedLink
	for _, l := range links {
		if t, ok := model.ParseTag(l.Attrs().Alias); ok && t.Instance == d.instance {
			out = append(out, model.TaggedLink{Name: l.Attrs().Name, Tag: t})
		}
	}
	return out, nil
}

// Generation is the generation this dataplane tags new links with.
func (d *Dataplane) Generation() string { return d.generation }

// Retag gives a link of this instance the current generation, if it still
// carries the tag old. Equivalent to: ip link set NAME alias TAG.
func (d *Dataplane) Retag(name string, old model.Tag) error {
	l, err := d.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if l.Attrs().Alias != old.String() {
		return nil
	}
	if err := d.nl.LinkSetAlias(l, d.tag(old.Kind, old.ID)); err != nil {
		return fmt.Errorf("retag %s: %w", name, err)
	}
	d.log.Debug("link retagged", "link", name, "from", old.String())
	return nil
}

// RemoveTagged deletes a link if it still carries tag t, whatever its
// generation: the operator's discard of another state's objects.
func (d *Dataplane) RemoveTagged(name string, t model.Tag) error {
	return d.removeOwnedLink(name, t.String())
}

// HasRules reports whether this instance has rules in the kernel: rules
// naming a network in its iptables chains, or anti-spoofing elements.
// Rules carry no generation, so when the state is new they can only be
// another state's.
func (d *Dataplane) HasRules() (bool, error) {
	for _, fw := range d.firewalls() {
		if has, err := fw.hasRules(); err != nil || has {
			return has, err
		}
	}
	return d.spoof.hasElements()
}
