package bridge

import (
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// TestOwnTags: a dataplane owns only its instance and generation's tags.
func TestOwnTags(t *testing.T) {
	const id = "5addea0eca26c8d1e5b3b4a6c0f1e2d3c4b5a69788796a5b4c3d2e1f00112233"
	d := &Dataplane{instance: "mynet", generation: "0badc0de"}
	if kind, gotID, ok := d.parseTag(d.tag(model.KindEndpoint, id)); !ok || kind != model.KindEndpoint || gotID != id {
		t.Errorf("own tag not recognised: %q %q %v", kind, gotID, ok)
	}
	for _, other := range []string{"mynet:mynet:net:" + id, "mynet:mynet:12345678:net:" + id, "mynet:other:0badc0de:net:" + id} {
		if _, _, ok := d.parseTag(other); ok {
			t.Errorf("%q taken for the dataplane's own (instance mynet, generation 0badc0de)", other)
		}
	}
}
