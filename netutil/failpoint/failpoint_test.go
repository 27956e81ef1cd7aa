package failpoint

import (
	"strings"
	"testing"
	"time"
)

func TestEnable(t *testing.T) {
	t.Cleanup(func() { Enable("") })
	for _, tc := range []struct {
		spec, err string
	}{
		{"", ""},
		{"a=error,b=crash", ""},
		{"a=sleep(150ms)", ""},
		{"a=sleep(2s), b=error", ""},
		{"a=panic", "not error, crash or sleep"},
		{"a=sleep(2)", "sleep(DURATION)"},
		{"a=sleep(-1s)", "sleep(DURATION)"},
		{"a=sleep(1s", "not error, crash or sleep"},
		{"a", "not error, crash or sleep"},
	} {
		err := Enable(tc.spec)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Enable(%q) = %v, want error containing %q", tc.spec, err, tc.err)
		}
	}
}

func TestInject(t *testing.T) {
	t.Cleanup(func() { Enable("") })
	if err := Enable("slow=sleep(100ms),broken=error"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := Inject("slow"); err != nil {
		t.Fatalf("sleep failpoint returned %v", err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("sleep(100ms) returned after %v", waited)
	}
	if err := Inject("broken"); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("error failpoint returned %v", err)
	}
	if err := Inject("other"); err != nil {
		t.Fatalf("a failpoint that is not enabled returned %v", err)
	}
}
