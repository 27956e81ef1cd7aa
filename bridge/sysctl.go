package bridge

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
)

// HostStatus is what mynet found about the host's forwarding setup.
type HostStatus struct {
	IPForward bool
	// BrNetfilter: bridged frames traverse iptables (the br_netfilter
	// module is loaded and bridge-nf-call-iptables is 1). Docker turns it
	// on; with it, traffic between two containers of one network crosses
	// FORWARD, which is why mynet accepts it explicitly.
	BrNetfilter       bool
	BrNetfilterLoaded bool
}

// EnsureHost enables IPv4 forwarding, as dockerd does, and reports the
// br_netfilter state. Forwarding is a host-wide switch; mynet only ever
// turns it on, and says so.
func EnsureHost(log *slog.Logger) (HostStatus, error) {
	var st HostStatus
	if err := ensureForwarding(log); err != nil {
		return st, err
	}
	st.IPForward = true
	switch v, err := readSysctl("net/bridge/bridge-nf-call-iptables"); {
	case errors.Is(err, fs.ErrNotExist):
		log.Warn("br_netfilter is not loaded: bridged traffic bypasses iptables, so isolation between containers of one network is not enforced; run: modprobe br_netfilter")
	case err != nil:
		return st, fmt.Errorf("read net.bridge.bridge-nf-call-iptables: %w", err)
	default:
		st.BrNetfilterLoaded = true
		st.BrNetfilter = v == "1"
		if !st.BrNetfilter {
			log.Warn("net.bridge.bridge-nf-call-iptables is 0: bridged traffic bypasses iptables; run: sysctl -w net.bridge.bridge-nf-call-iptables=1")
		}
	}
	return st, nil
}

// ensureForwarding turns on IPv4 forwarding when it is off. It is checked
// at every CreateNetwork too, since anything may have turned it off.
func ensureForwarding(log *slog.Logger) error {
	v, err := readSysctl("net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("read net.ipv4.ip_forward: %w", err)
	}
	if v == "1" {
		return nil
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable net.ipv4.ip_forward (containers need it to reach beyond the host): %w; run on the host: sysctl -w net.ipv4.ip_forward=1", err)
	}
	log.Info("enabled IPv4 forwarding", "sysctl", "net.ipv4.ip_forward=1")
	return nil
}
