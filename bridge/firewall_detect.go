package bridge

// Which firewall backend holds Docker's rules and this instance's, and
// which one serve --firewall auto picks: dockerd's.

import (
	"errors"
	"fmt"

	"github.com/google/nftables"

	"github.com/mynet/mynet/internal/model"
)

// dockerNFTTable is the table of Docker 29's nftables backend (one of
// family ip, one of ip6; moby daemon/libnetwork/drivers/bridge/internal/
// nftabler).
const dockerNFTTable = "docker-bridges"

// dockerIPTablesChains are chains only Docker's iptables backend creates
// (DOCKER-FORWARD since 28, DOCKER since forever).
var dockerIPTablesChains = []string{"DOCKER", "DOCKER-FORWARD"}

// FirewallUse is what the kernel shows of each backend.
type FirewallUse struct {
	// DockerNFT: Docker's docker-bridges table exists; DockerIPTables:
	// Docker's chains exist in the iptables the binary on PATH uses.
	DockerNFT, DockerIPTables bool
	// OwnNFT, OwnIPTables: this instance's table, or chains, exist.
	OwnNFT, OwnIPTables bool
	// IPTablesWorks: the iptables binary runs and reads the filter table.
	IPTablesWorks bool
	// NFTWorks: nftables answers over netlink.
	NFTWorks bool
}

// DetectFirewalls looks at both backends in the calling thread's network
// namespace. Reading only: it changes nothing.
func DetectFirewalls(instance string) FirewallUse {
	var u FirewallUse
	if c, err := nftables.New(); err == nil {
		u.DockerNFT, u.OwnNFT, err = nftTables(c, instance)
		u.NFTWorks = err == nil
	}
	ipt, err := newIPTables(false)
	if err != nil {
		return u
	}
	out, err := ipt.Save()
	if err != nil {
		return u
	}
	u.IPTablesWorks = true
	filter := parseSave(out).table(model.TableFilter)
	for _, c := range dockerIPTablesChains {
		u.DockerIPTables = u.DockerIPTables || filter.hasChain(c)
	}
	u.OwnIPTables = filter.hasChain(model.ChainsFor(instance).Forward)
	return u
}

// nftTables reports whether Docker's tables and this instance's exist, in
// family ip or ip6, from one dump of the tables: cheap enough for every
// reconcile pass.
func nftTables(c *nftables.Conn, instance string) (docker, own bool, err error) {
	tables, err := c.ListTables()
	if err != nil {
		return false, false, err
	}
	for _, t := range tables {
		if t.Family != nftables.TableFamilyIPv4 && t.Family != nftables.TableFamilyIPv6 {
			continue
		}
		docker = docker || t.Name == dockerNFTTable
		own = own || t.Name == model.NFTTableName(instance)
	}
	return docker, own, nil
}

// Docker returns the backend Docker's rules are in, "" when none shows.
func (u FirewallUse) Docker() string {
	switch {
	case u.DockerNFT:
		return model.FirewallNFTables
	case u.DockerIPTables:
		return model.FirewallIPTables
	}
	return ""
}

// Own returns the backend this instance's rules are in, "" when none.
func (u FirewallUse) Own() string {
	switch {
	case u.OwnNFT && u.OwnIPTables:
		return "both"
	case u.OwnNFT:
		return model.FirewallNFTables
	case u.OwnIPTables:
		return model.FirewallIPTables
	}
	return ""
}

// ChooseFirewall resolves serve's --firewall: an explicit backend stays;
// auto follows Docker's rules, and without any uses iptables when the
// binary works, else nftables. why says what decided, for the log.
func ChooseFirewall(flag string, u FirewallUse) (backend, why string, err error) {
	switch flag {
	case model.FirewallIPTables, model.FirewallNFTables:
		return flag, "--firewall " + flag, nil
	case model.FirewallAuto, "":
	default:
		return "", "", fmt.Errorf("--firewall %q: use %s, %s or %s", flag, model.FirewallAuto, model.FirewallIPTables, model.FirewallNFTables)
	}
	switch {
	case u.DockerNFT:
		return model.FirewallNFTables, "Docker's rules are in nftables (table " + dockerNFTTable + ")", nil
	case u.DockerIPTables:
		return model.FirewallIPTables, "Docker's rules are in iptables (chain DOCKER)", nil
	case u.IPTablesWorks:
		return model.FirewallIPTables, "no Docker rules found; the iptables binary works", nil
	case u.NFTWorks:
		return model.FirewallNFTables, "no Docker rules found and no working iptables binary", nil
	}
	return "", "", errors.New("neither iptables nor nftables works here: install the iptables package, or load nf_tables")
}

// FollowFirewall decides at a reconcile pass whether a running instance
// moves its rules to another backend, and why: under --firewall auto
// only, and only when Docker's rules show in the other backend (dockerd
// was restarted with it). Docker's rules showing nowhere (dockerd stopped,
// or restarted with --iptables=false) is no reason to move rules that
// work: ChooseFirewall's fallbacks are for a start from nothing. An
// explicit --firewall never moves.
func FollowFirewall(flag, current string, u FirewallUse) (next, why string) {
	if flag != model.FirewallAuto && flag != "" {
		return current, ""
	}
	switch docker := u.Docker(); {
	case docker == "" || docker == current:
		return current, ""
	case docker == model.FirewallNFTables:
		return docker, "Docker's rules are now in nftables (table " + dockerNFTTable + ")"
	default:
		return docker, "Docker's rules are now in iptables (chain DOCKER) and its nftables table is gone"
	}
}

// FirewallBackend is the backend this Dataplane keeps its rules in.
func (d *Dataplane) FirewallBackend() string {
	if _, ok := d.fw4.(*nftFirewall); ok {
		return model.FirewallNFTables
	}
	return model.FirewallIPTables
}

// RemoveOtherFirewall deletes this instance's rules from the backend it
// does not use: left there by a run on the other backend (dockerd's
// backend changed, or --firewall did), they would keep filtering with a
// stale policy. A backend that does not work here has none.
func (d *Dataplane) RemoveOtherFirewall() error {
	var others []firewall
	if d.FirewallBackend() == model.FirewallNFTables {
		for _, v6 := range []bool{false, true} {
			if ipt, err := newIPTables(v6); err == nil {
				others = append(others, newIPTablesFirewall(d.instance, ipt, v6, d.gen, d.log))
			}
		}
	} else {
		for _, v6 := range []bool{false, true} {
			f := newNFTFirewall(d.instance, v6, d.log)
			if f.err != nil {
				continue
			}
			defer f.close()
			others = append(others, f)
		}
	}
	// With no network kept, removeOrphans deletes every rule of the
	// instance and then its chains, or its table.
	var errs []error
	for _, fw := range others {
		if err := fw.removeOrphans(map[string]bool{}, map[string]bool{}); err != nil {
			errs = append(errs, fmt.Errorf("remove this instance's rules from %s: %w", fw.family(), err))
		}
	}
	return errors.Join(errs...)
}
