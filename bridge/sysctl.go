package bridge

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
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

// ignoreRouterAdvertisements makes sure the host ignores router
// advertisements arriving on the bridge, so a container cannot become the
// host's IPv6 router (CVE-2020-10749). accept_ra=0 does it; where /proc/sys
// is read-only (a managed plugin), forwarding=1 on the bridge, which a
// Docker host with IPv6 has, does too: the kernel then ignores RAs unless
// accept_ra is 2.
func ignoreRouterAdvertisements(bridge string) error {
	werr := writeSysctl("net/ipv6/conf/"+bridge+"/accept_ra", "0")
	if werr == nil {
		return nil
	}
	ra, _ := readSysctl("net/ipv6/conf/" + bridge + "/accept_ra")
	fwd, _ := readSysctl("net/ipv6/conf/" + bridge + "/forwarding")
	if fwd == "1" && ra != "2" {
		return nil
	}
	return fmt.Errorf("disable router advertisements on bridge %s: %w; on the host run: sysctl -w net.ipv6.conf.all.forwarding=1 (Docker does this for IPv6 networks)", bridge, werr)
}

// ipv4DevconfRouteLocalnet is IPV4_DEVCONF_ROUTE_LOCALNET from linux/ip.h.
const ipv4DevconfRouteLocalnet = 26

// setRouteLocalnet sets net.ipv4.conf.<link>.route_localnet=1 through
// rtnetlink (IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF), which needs only
// CAP_NET_ADMIN and so works in a managed plugin, whose /proc/sys is
// read-only. Equivalent to: sysctl -w net.ipv4.conf.LINK.route_localnet=1.
func (d *Dataplane) setRouteLocalnet(link string) error {
	l, err := d.nl.LinkByName(link)
	if err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	inet := spec.AddRtAttr(unix.AF_INET, nil)
	conf := inet.AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfRouteLocalnet, nl.Uint32Attr(1))
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set route_localnet on %s: %w", link, err)
	}
	return nil
}

// writeSysctl sets /proc/sys/<key>.
// Equivalent to: sysctl -w key=value.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == value+"\n" {
		return nil
	}
	return os.WriteFile(path, []byte(value), 0o644)
}

// readSysctl returns /proc/sys/<key> without its newline. The periodic
// fingerprint reads three per bridge: with plain system calls, which
// skip os.File's poller registration and stat, that is half the time of
// os.ReadFile.
func readSysctl(key string) (string, error) {
	path := "/proc/sys/" + key
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var buf [128]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil {
		return "", &os.PathError{Op: "read", Path: path, Err: err}
	}
	if n == len(buf) { // longer than a switch's value: read it whole
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		return string(b[:len(b)-min(1, len(b))]), nil
	}
	return string(buf[:n-min(1, n)]), nil
}
