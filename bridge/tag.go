package bridge

import (
	"fmt"
	"strings"
)

// Tag is the ownership mark in the alias of every link mynet creates:
//
//	mynet:<instance>:<generation>:net:<network ID>   (a bridge)
//	mynet:<instance>:<generation>:ep:<endpoint ID>   (a host veth)
//
// The instance is the plugin's --name; the generation is the random ID of
// the state file the link was created under (state.Store.Generation). A
// link of this instance with another generation belongs to a state file
// that was lost, moved aside or replaced: it may carry a running
// container's traffic, so it is never deleted as an orphan nor adopted
// without the operator's word (serve --discard-orphans).
//
// The previous release wrote mynet:<instance>:<kind>:<ID>, which parses
// with an empty Generation. Instance names cannot contain ':', so the
// number of fields tells the two formats apart.
type Tag struct {
	Instance, Generation, Kind, ID string
}

// Tag kinds.
const (
	KindNetwork  = "net"
	KindEndpoint = "ep"
)

func (t Tag) String() string {
	if t.Generation == "" {
		return "mynet:" + t.Instance + ":" + t.Kind + ":" + t.ID
	}
	return "mynet:" + t.Instance + ":" + t.Generation + ":" + t.Kind + ":" + t.ID
}

// ParseTag parses a link alias; ok is false for anything but a mynet tag.
func ParseTag(alias string) (t Tag, ok bool) {
	f := strings.Split(alias, ":")
	switch {
	case len(f) == 4 && f[0] == "mynet":
		t = Tag{Instance: f[1], Kind: f[2], ID: f[3]}
	case len(f) == 5 && f[0] == "mynet" && f[2] != "":
		t = Tag{Instance: f[1], Generation: f[2], Kind: f[3], ID: f[4]}
	default:
		return Tag{}, false
	}
	return t, t.Instance != "" && t.ID != "" && (t.Kind == KindNetwork || t.Kind == KindEndpoint)
}

func (d *Dataplane) tag(kind, id string) string {
	return Tag{Instance: d.instance, Generation: d.generation, Kind: kind, ID: id}.String()
}

// parseTag accepts only the tags of this instance and generation: the
// objects this state created, the only ones it may delete as orphans.
func (d *Dataplane) parseTag(alias string) (kind, id string, ok bool) {
	t, ok := ParseTag(alias)
	if !ok || t.Instance != d.instance || t.Generation != d.generation {
		return "", "", false
	}
	return t.Kind, t.ID, true
}

// TaggedLink is a link tagged by this instance, of any generation.
type TaggedLink struct {
	Name string
	Tag  Tag
}

// TaggedLinks lists the links tagged by this instance, whatever their
// generation, from one link dump.
func (d *Dataplane) TaggedLinks() ([]TaggedLink, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	var out []TaggedLink
	for _, l := range links {
		if t, ok := ParseTag(l.Attrs().Alias); ok && t.Instance == d.instance {
			out = append(out, TaggedLink{Name: l.Attrs().Name, Tag: t})
		}
	}
	return out, nil
}

// Generation is the generation this dataplane tags new links with.
func (d *Dataplane) Generation() string { return d.generation }

// Retag gives a link of this instance the current generation, if it still
// carries the tag old. Equivalent to: ip link set NAME alias TAG.
func (d *Dataplane) Retag(name string, old Tag) error {
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
func (d *Dataplane) RemoveTagged(name string, t Tag) error {
	return d.removeOwnedLink(name, t.String())
}

// HasRules reports whether this instance has rules in the kernel: rules
// naming a network in its iptables chains, or anti-spoofing elements.
// Rules carry no generation, so when the state is new they can only be
// another state's.
func (d *Dataplane) HasRules() (bool, error) {
	for _, f := range d.firewalls() {
		for _, tc := range f.chains.tables() {
			exists, err := f.ipt.ChainExists(tc.table, tc.chain)
			if err != nil {
				return false, fmt.Errorf("check chain %s: %w", tc.chain, err)
			}
			if !exists {
				continue
			}
			lines, err := f.ipt.List(tc.table, tc.chain)
			if err != nil {
				return false, fmt.Errorf("list chain %s: %w", tc.chain, err)
			}
			for _, l := range lines {
				if commentRE.MatchString(l) {
					return true, nil
				}
			}
		}
	}
	c, err := d.lockNFT()
	defer d.nft.mu.Unlock()
	if err != nil {
		return false, nil // no nftables: no anti-spoofing elements either
	}
	st, _, err := d.loadSpoofState(c, d.spoofObjects())
	if err != nil {
		return false, err
	}
	return st.exists && len(st.veths) > 0, nil
}
