package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// engineFirewallTimeout bounds the one question to dockerd.
const engineFirewallTimeout = 5 * time.Second

// checkEngineFirewall asks dockerd once, in the background, which
// firewall backend it reports (GET /info FirewallBackend, engines 28.1
// and later), and logs when that is not the backend mynet chose from the
// rules it found. Never on the path of the socket's opening or of a
// request: at boot dockerd starts its plugins before it answers its API,
// and a plugin that waits for it deadlocks (docker-net-dhcp#23, #44).
// The kernel decides, not this answer: Docker 28.5 with
// DOCKER_FIREWALL_BACKEND=nftables reports nftables but writes iptables
// rules. dockerRules says whether Docker's rules were found anywhere.
func checkEngineFirewall(ctx context.Context, log *slog.Logger, mine string, dockerRules bool) {
	go func() {
		ctx, cancel := context.WithTimeout(ctx, engineFirewallTimeout)
		defer cancel()
		got, err := engineFirewall(ctx, dockerSocket())
		if err != nil {
			log.Debug("dockerd's firewall backend not asked", "err", err)
			return
		}
		level, msg := engineFirewallVerdict(got, mine, dockerRules)
		log.Log(ctx, level, msg, "dockerd_reports", got, "mynet_uses", mine)
	}()
}

// engineFirewallVerdict is what checkEngineFirewall logs of dockerd's
// answer. A dockerd that keeps no rules (--iptables=false, as on hosts
// whose firewall is nftables only) still reports the backend it would
// use: a difference from mynet's then is no conflict.
func engineFirewallVerdict(got, mine string, dockerRules bool) (slog.Level, string) {
	switch {
	case got == "":
		return slog.LevelDebug, "dockerd reports no firewall backend (engines before 28.1)"
	case got == mine:
		return slog.LevelDebug, "dockerd reports the same firewall backend"
	case !dockerRules:
		return slog.LevelInfo, "dockerd reports another firewall backend, but keeps no rules in either (--iptables=false?): nothing of Docker's to follow"
	}
	return slog.LevelWarn, "dockerd reports another firewall backend than the one mynet found its rules in"
}

// dockerSocket is the engine's unix socket: DOCKER_HOST when it names one.
func dockerSocket() string {
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok && h != "" {
		return h
	}
	return "/var/run/docker.sock"
}

// engineFirewall returns /info's FirewallBackend.Driver, "" when absent.
func engineFirewall(ctx context.Context, socket string) (string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/info", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var info struct {
		FirewallBackend *struct{ Driver string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return "", err
	}
	if info.FirewallBackend == nil {
		return "", nil
	}
	return info.FirewallBackend.Driver, nil
}
