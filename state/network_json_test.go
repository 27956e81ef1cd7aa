package state

import (
	"encoding/json"
	"strings"
	"testing"
)

// The anti-spoofing flag keeps its on-disk key and polarity: records of
// every release read back with the filter they had.
func TestNetworkAntiSpoofingJSON(t *testing.T) {
	for _, tc := range []struct {
		name, record string
		want         bool
	}{
		{"record from before the option: protected", `{"ID":"a","Bridge":"mn-a","ICC":true,"Masquerade":true}`, true},
		{"filter turned off", `{"ID":"a","Bridge":"mn-a","SpoofingAllowed":true}`, false},
		{"explicit false", `{"ID":"a","Bridge":"mn-a","SpoofingAllowed":false}`, true},
	} {
		var n Network
		if err := json.Unmarshal([]byte(tc.record), &n); err != nil {
			t.Fatal(err)
		}
		if n.AntiSpoofing != tc.want || n.ID != "a" || n.Bridge != "mn-a" {
			t.Errorf("%s: got %+v, want AntiSpoofing %v", tc.name, n, tc.want)
		}
		out, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(out), `"SpoofingAllowed":true`); got == tc.want {
			t.Errorf("%s: wrote %s", tc.name, out)
		}
		if strings.Contains(string(out), "AntiSpoofing") {
			t.Errorf("%s: wrote the Go field name: %s", tc.name, out)
		}
	}
}
