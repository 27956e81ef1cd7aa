package model

import (
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

// TaggedLink is a link tagged by this instance, of any generation.
type TaggedLink struct {
	Name string
	Tag  Tag
}
