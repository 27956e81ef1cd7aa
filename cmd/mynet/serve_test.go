package main

import (
	"strings"
	"testing"
)

func TestServeMetricsFlags(t *testing.T) {
	for _, c := range []struct {
		args    []string
		errPart string
	}{
		{[]string{"--metrics-socket", "/run/mynet/metrics.sock"}, ""},
		{[]string{"--metrics-addr", "127.0.0.1:9323"}, ""},
		{[]string{"--metrics-addr", "[::1]:9323"}, ""},
		{[]string{"--metrics-addr", "0.0.0.0:9323"}, "only loopback"},
		{[]string{"--metrics-addr", ":9323"}, "only loopback"},
		{[]string{"--metrics-socket", "/x.sock", "--metrics-addr", "127.0.0.1:9323"}, "not both"},
	} {
		f, err := parseServeFlags(c.args)
		switch {
		case c.errPart == "" && err != nil:
			t.Errorf("serve %q: %v", c.args, err)
		case c.errPart != "" && (err == nil || !strings.Contains(err.Error(), c.errPart)):
			t.Errorf("serve %q: error %v, want %q", c.args, err, c.errPart)
		case c.errPart == "" && f.metricsSocket == "" && f.metricsAddr == "":
			t.Errorf("serve %q: no metrics listener set", c.args)
		}
	}
	if f, err := parseServeFlags(nil); err != nil || f.metricsSocket != "" || f.metricsAddr != "" {
		t.Errorf("metrics must be off by default: %+v %v", f, err)
	}
}
