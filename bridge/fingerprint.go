package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// Fingerprint summarises the links and iptables rules this instance owns:
// its links with their state and addresses, and every iptables line that
// mentions its chains. The anti-spoofing table has a fingerprint of its
// own, SpoofFingerprint, because repairing it costs a pass over every
// endpoint. Two equal fingerprints mean nobody touched mynet's objects in
// between, which lets the periodic reconcile skip its full pass.
//
// The rules are read with one iptables-save per family and table rather
// than one `iptables -S` per chain: a fingerprint runs every few seconds,
// and with the nft backend each call loads the whole ruleset anyway. The
// output is only hashed, never parsed into decisions.
func (d *Dataplane) Fingerprint() (string, error) {
	h := sha256.New()
	links, err := d.linkList()
	if err != nil {
		return "", err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if _, _, ok := d.parseTag(a.Alias); !ok {
			continue
		}
		// Without the carrier (FlagRunning): it comes up when the engine
		// plugs the other end into a container, which is not a change to
		// repair, and a pass that saw it down would take the next one for
		// outside damage.
		fmt.Fprintf(h, "%s %s %d %d %v\n", a.Name, a.Alias, a.MTU, a.MasterIndex, a.Flags&^net.FlagRunning)
		var own []string
		for _, ad := range addrs {
			if ad.LinkIndex == a.Index && !ad.IP.IsLinkLocalUnicast() {
				own = append(own, ad.IPNet.String())
			}
		}
		slices.Sort(own)
		fmt.Fprintln(h, own)
	}
	for _, fw := range d.firewalls() {
		lines, err := fw.ownLines()
		if err != nil {
			return "", err
		}
		fmt.Fprintln(h, lines)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ownLines returns the lines of iptables-save that mention this instance's
// chains, in order.
func (f *firewall) ownLines() ([]string, error) {
	bin := "iptables-save"
	if f.v6 {
		bin = "ip6tables-save"
	}
	prefix := strings.TrimSuffix(f.chains.forward, "FORWARD")
	var out []string
	for _, table := range []string{tableFilter, tableNAT} {
		raw, err := exec.Command(bin, "-t", table).Output()
		if err != nil {
			return nil, fmt.Errorf("%s -t %s: %w", bin, table, err)
		}
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.Contains(l, prefix) && !strings.HasPrefix(l, "#") {
				// Chain lines carry packet counters: drop them.
				if strings.HasPrefix(l, ":") {
					l, _, _ = strings.Cut(l, " ")
				}
				out = append(out, l)
			}
		}
	}
	return out, nil
}
