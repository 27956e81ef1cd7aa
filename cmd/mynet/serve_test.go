package main

import (
	"log/slog"
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

// TestEngineFirewallVerdict: a dockerd without rules of its own reports a
// backend all the same (sid's 28.5 with --iptables=false says iptables);
// only a dockerd whose rules are somewhere is warned about.
func TestEngineFirewallVerdict(t *testing.T) {
	for _, tc := range []struct {
		got, mine   string
		dockerRules bool
		want        slog.Level
	}{
		{"", "iptables", true, slog.LevelDebug},
		{"iptables", "iptables", true, slog.LevelDebug},
		{"nftables", "iptables", true, slog.LevelWarn},
		{"iptables", "nftables", false, slog.LevelInfo},
		{"iptables", "nftables", true, slog.LevelWarn},
	} {
		if got, msg := engineFirewallVerdict(tc.got, tc.mine, tc.dockerRules); got != tc.want {
			t.Errorf("dockerd %q, mynet %q, Docker's rules found %v: %v (%s), want %v", tc.got, tc.mine, tc.dockerRules, got, msg, tc.want)
		}
	}
}
