package model

import (
	"testing"
)

func TestParseTag(t *testing.T) {
	const id = "5addea0eca26c8d1e5b3b4a6c0f1e2d3c4b5a69788796a5b4c3d2e1f00112233"
	for _, tc := range []struct {
		alias string
		want  Tag
		ok    bool
	}{
		{"mynet:mynet:0badc0de:net:" + id, Tag{"mynet", "0badc0de", KindNetwork, id}, true},
		{"mynet:mynet-e2e.1:0badc0de:ep:" + id, Tag{"mynet-e2e.1", "0badc0de", KindEndpoint, id}, true},
		{"mynet:mynet:net:" + id, Tag{"mynet", "", KindNetwork, id}, true}, // the previous release's
		{"mynet:mynet::net:" + id, Tag{}, false},
		{"mynet:mynet:0badc0de:br:" + id, Tag{}, false},
		{"mynet:mynet:0badc0de:net:", Tag{}, false},
		{"mynet::net:" + id, Tag{}, false},
		{"other:mynet:net:" + id, Tag{}, false},
		{"mynet:a:b:c:net:" + id, Tag{}, false},
		{"", Tag{}, false},
	} {
		got, ok := ParseTag(tc.alias)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("ParseTag(%q) = %+v, %v; want %+v, %v", tc.alias, got, ok, tc.want, tc.ok)
		}
		if ok && got.String() != tc.alias {
			t.Errorf("Tag %+v formats as %q, parsed from %q", got, got.String(), tc.alias)
		}
	}
}
