package bridge

// Following dockerd's firewall backend while mynet runs (serve --firewall
// auto): Fingerprint notes where Docker's rules are, and the reconcile
// pass that sees that change moves this instance's rules there.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// dockerSeen is what the last Fingerprint saw of Docker's rules, so that
// FollowFirewall decides without reading the rulesets again.
type dockerSeen struct {
	taken bool // a Fingerprint ran
	// nft: Docker's docker-bridges table exists; nftWorks: the table list
	// could be read.
	nft, nftWorks bool
	// ipt: Docker's chains exist in iptables; iptRead: this was read,
	// which the fingerprint does under the iptables backend only.
	ipt, iptRead bool
}

// seeDocker notes what the fingerprint saw of Docker's rules for
// FollowFirewall: ipt and iptRead come from its iptables lines, and the
// nftables tables are listed (one netlink dump) when the ruleset
// generation moved since the last listing.
func (d *Dataplane) seeDocker(ipt, iptRead bool) dockerSeen {
	s := dockerSeen{taken: true, ipt: ipt, iptRead: iptRead}
	if d.nftList != nil {
		gen, ok := d.gen.current()
		if !ok || !d.nftSeen.ok || d.nftSeen.gen != gen {
			var err error
			d.nftSeen.nft, _, err = nftTables(d.nftList, d.instance)
			d.nftSeen.works = err == nil
			d.nftSeen.gen, d.nftSeen.ok = gen, ok && err == nil
			d.nftSeen.listings++
		}
		s.nft, s.nftWorks = d.nftSeen.nft, d.nftSeen.works
	}
	d.seenMu.Lock()
	d.seen = s
	d.seenMu.Unlock()
	return s
}

// nftListing is the last listing of the nftables tables, at a ruleset
// generation.
type nftListing struct {
	gen        uint32
	ok         bool // gen is known and the listing worked
	nft, works bool
	listings   int // for tests and benchmarks
}

// isDockerChainLine reports whether an iptables-save line declares one of
// the chains only Docker's iptables backend creates.
func isDockerChainLine(l string) bool {
	name, ok := strings.CutPrefix(l, ":")
	if !ok {
		return false
	}
	for _, c := range dockerIPTablesChains {
		if name == c {
			return true
		}
	}
	return false
}

// FollowFirewall moves this instance's rules to the backend Docker's rules
// are in now, when it was built with Config.Follow (serve --firewall auto)
// and the last Fingerprint saw Docker's rules in the other backend
// (FollowFirewall, the function, decides). rules returns all the state's
// networks and endpoints with published ports (ep.Ports), asked for only
// when it moves: they are ensured in the new backend, in one ensureAll
// per family, before this
// instance's rules leave the old one, so a container loses at most what
// the two backends' overlap costs, not its connectivity. It returns the
// backends and why when it moved, to == "" when it did not.
//
// The caller holds every other firewall call off (the driver's pass
// holds its operations' lock alone): the Dataplane's firewalls change
// under them. A failure before the old backend's rules are removed
// leaves the old backend in use and removes what was added to the new
// one. A failure while removing them leaves the new backend in use (it
// holds every rule) and the rest for the next call to remove.
func (d *Dataplane) FollowFirewall(ctx context.Context, rules func() ([]model.Network, []model.Endpoint)) (from, to, why string, err error) {
	if err := d.removeLeftover(); err != nil {
		return "", "", "", err
	}
	d.seenMu.Lock()
	s := d.seen
	d.seenMu.Unlock()
	if !d.follow || !s.taken {
		return "", "", "", nil
	}
	from = d.FirewallBackend()
	u := FirewallUse{DockerNFT: s.nft, NFTWorks: s.nftWorks, DockerIPTables: s.ipt}
	if !s.nft && !s.iptRead {
		// Under nftables, Docker's table is gone: an iptables-save tells
		// whether dockerd came back on iptables or is just not there.
		if u.DockerIPTables, err = d.iptablesHasDocker(); err != nil {
			return "", "", "", err
		}
	}
	next, why := FollowFirewall(model.FirewallAuto, from, u)
	if next == from {
		return "", "", "", nil
	}
	networks, endpoints := rules()
	swapped, err := d.switchFirewall(ctx, next, networks, endpoints)
	if err != nil {
		err = fmt.Errorf("move mynet's rules from %s to %s (%s): %w", from, next, why, err)
	}
	if !swapped {
		return "", "", "", err
	}
	return from, next, why, err
}

// iptablesHasDocker reads iptables (the binary on PATH) for Docker's
// chains; without a working binary there are none. Each pass asks while
// Docker's rules are in neither backend (a dockerd with --iptables=false),
// so under iptables-nft the answer is kept while the ruleset generation
// stays; iptables-legacy's changes show in no generation and are read
// each time.
func (d *Dataplane) iptablesHasDocker() (bool, error) {
	ipt, err := newIPTables(false)
	if err != nil {
		return false, nil
	}
	gen, ok := d.gen.current()
	nb, isNB := ipt.(nftBacked)
	ok = ok && isNB && nb.nfTables()
	d.fpMu.Lock()
	last := d.dockerIPT
	d.fpMu.Unlock()
	if ok && last.ok && last.gen == gen {
		return last.has, nil
	}
	out, err := ipt.Save()
	if err != nil {
		return false, fmt.Errorf("look for Docker's iptables chains: %w", err)
	}
	filter := parseSave(out).table(model.TableFilter)
	has := slices.ContainsFunc(dockerIPTablesChains, filter.hasChain)
	d.fpMu.Lock()
	d.dockerIPT = dockerIPTables{gen: gen, ok: ok, has: has}
	d.fpMu.Unlock()
	return has, nil
}

// dockerIPTables is iptablesHasDocker's last answer, at a generation.
type dockerIPTables struct {
	gen     uint32
	ok, has bool
}

// switchFirewall ensures every rule in backend's firewalls, swaps them in
// and removes this instance's rules from the old ones. swapped says
// whether the new ones are in use, also when the removal failed.
func (d *Dataplane) switchFirewall(ctx context.Context, backend string, networks []model.Network, endpoints []model.Endpoint) (swapped bool, retErr error) {
	fw4, fw6, err := d.newFirewalls(backend)
	if err != nil {
		return false, err
	}
	var undo netutil.Undo
	defer func() {
		if retErr != nil {
			undo.Rollback(&retErr, d.log)
			closeFirewalls(fw4, fw6)
		}
	}()
	for _, fw := range []firewall{fw4, fw6} {
		if fw == nil {
			continue
		}
		if _, err := fw.ensureAll(ctx, networks, endpoints, &undo); err != nil {
			return false, fmt.Errorf("ensure the rules in %s: %w", fw.family(), err)
		}
	}
	if err := failpoint.Inject("bridge.firewall.follow"); err != nil {
		return false, err
	}
	old := d.firewalls()
	d.fw4, d.fw6 = fw4, fw6
	if err := removeAllRules(old); err != nil {
		// The new backend holds every rule: keep it, and retry the old
		// one's removal at the next call.
		d.leftover = old
		return true, err
	}
	closeFirewalls(old...)
	return true, nil
}

// newFirewalls builds backend's firewalls as New does; fw6 is nil without
// ip6tables.
func (d *Dataplane) newFirewalls(backend string) (fw4, fw6 firewall, err error) {
	if backend == model.FirewallNFTables {
		f4, f6 := newNFTFirewall(d.instance, false, d.log), newNFTFirewall(d.instance, true, d.log)
		if err := errors.Join(f4.err, f6.err); err != nil {
			closeFirewalls(f4, f6)
			return nil, nil, err
		}
		return f4, f6, nil
	}
	ipt4, err := newIPTables(false)
	if err != nil {
		return nil, nil, err
	}
	fw4 = newIPTablesFirewall(d.instance, ipt4, false, d.gen, d.log)
	if ipt6, err := newIPTables(true); err == nil {
		fw6 = newIPTablesFirewall(d.instance, ipt6, true, d.gen, d.log)
	}
	return fw4, fw6, nil
}

// removeAllRules deletes this instance's rules, chains and tables from
// the firewalls, as RemoveOtherFirewall does.
func removeAllRules(fws []firewall) error {
	var errs []error
	for _, fw := range fws {
		if err := fw.removeOrphans(map[string]bool{}, map[string]bool{}); err != nil {
			errs = append(errs, fmt.Errorf("remove this instance's rules from %s: %w", fw.family(), err))
		}
	}
	return errors.Join(errs...)
}

// removeLeftover retries the removal of the rules a switch could not
// remove from the backend it left.
func (d *Dataplane) removeLeftover() error {
	if d.leftover == nil {
		return nil
	}
	if err := removeAllRules(d.leftover); err != nil {
		return fmt.Errorf("rules left in the firewall backend mynet no longer uses: %w", err)
	}
	closeFirewalls(d.leftover...)
	d.leftover = nil
	return nil
}

// closeFirewalls releases the netlink sockets of nftables firewalls.
func closeFirewalls(fws ...firewall) {
	for _, fw := range fws {
		if c, ok := fw.(interface{ close() }); ok {
			c.close()
		}
	}
}
