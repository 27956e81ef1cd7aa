package bridge

// The VXLAN port is not a container port: the kernel decapsulates whatever
// reaches it and hands the inner frame to the network's bridge, past the
// anti-spoofing filter (which guards container ports only), as if a
// container of the network had sent it. So the port accepts traffic from
// the cluster's known VTEPs only. This is a filter, not authentication: a
// host of the underlay that forges a known VTEP's source address still gets
// through (encryption is a later step, see docs/multihost.md).
//
// iptables layout, filter table, one chain per instance whatever the number
// of cluster networks (they share the port and the hosts):
//
//	-I INPUT 1 -p udp -m udp --dport PORT -m comment --comment "mynet INSTANCE" -j MYNET-VXLAN
//	-A MYNET-VXLAN -s VTEP/32 -j ACCEPT     # one per remote VTEP
//	-A MYNET-VXLAN -j DROP
//
// A rule per host, not per endpoint: the chain grows with the cluster's
// hosts only. (ipset would make it one lookup; it is one more binary and
// kernel module to depend on, and a cluster has tens of hosts, not
// thousands.) The nftables backend keeps the same filter in a table of
// its own, with a set (vxlan_nft.go).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/mynet/mynet/internal/model"
)

// vtepFilter is one family's filter of the VXLAN port.
type vtepFilter interface {
	// syncVTEPs makes the port accept exactly vteps (all of this family)
	// and drop the rest, in one atomic change; changed reports whether it
	// wrote anything.
	syncVTEPs(ctx context.Context, port int, vteps []netip.Addr) (changed bool, err error)
	// removeVTEPs removes the filter; the port is then as the host's
	// other rules leave it.
	removeVTEPs() error
	// readVTEPs reads the filter back: the port its hook matches (0: no
	// hook) and the VTEPs it accepts.
	readVTEPs() (port int, vteps []netip.Addr, err error)
}

// VTEPFilter is the VXLAN port's filter as the kernel has it.
type VTEPFilter struct {
	Port  int          // 0: no filter
	VTEPs []netip.Addr // accepted, both families, sorted
}

// SyncVTEPFilter makes the VXLAN port accept traffic from vteps only, in
// each family with one read and one iptables-restore transaction; a family
// without VTEPs drops all of it. Repeating it with the same set writes
// nothing. RemoveVTEPFilter undoes it.
func (d *Dataplane) SyncVTEPFilter(ctx context.Context, port int, vteps []netip.Addr) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("VXLAN port %d is out of range: use 1 to 65535", port)
	}
	fs, err := d.vtepFilters()
	if err != nil {
		return err
	}
	byFamily := map[bool][]netip.Addr{}
	for _, v := range vteps {
		if err := model.ValidateVTEP(v); err != nil {
			return fmt.Errorf("VXLAN port filter: VTEP: %w", err)
		}
		v = v.Unmap()
		byFamily[v.Is6()] = append(byFamily[v.Is6()], v)
	}
	if len(byFamily[true]) > 0 && len(fs) < 2 {
		return fmt.Errorf("VXLAN port filter: IPv6 VTEPs %v need ip6tables, which is not available; install it or use IPv4 VTEPs", byFamily[true])
	}
	for i, f := range fs {
		if err := stopped(ctx, "the VXLAN port filter"); err != nil {
			return err
		}
		changed, err := f.syncVTEPs(ctx, port, byFamily[i == 1])
		if err != nil {
			return err
		}
		if changed {
			d.log.Debug("VXLAN port filter written", "port", port, "ipv6", i == 1, "vteps", len(byFamily[i == 1]))
		}
	}
	return nil
}

// RemoveVTEPFilter removes the VXLAN port's filter in every family.
func (d *Dataplane) RemoveVTEPFilter(ctx context.Context) error {
	fs, err := d.vtepFilters()
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range fs {
		if err := stopped(ctx, "removing the VXLAN port filter"); err != nil {
			return errors.Join(append(errs, err)...)
		}
		errs = append(errs, f.removeVTEPs())
	}
	return errors.Join(errs...)
}

// ReadVTEPFilter reads the VXLAN port's filter back, for the doctor and
// the reconcile.
func (d *Dataplane) ReadVTEPFilter() (VTEPFilter, error) {
	fs, err := d.vtepFilters()
	if err != nil {
		return VTEPFilter{}, err
	}
	var out VTEPFilter
	for _, f := range fs {
		port, vteps, err := f.readVTEPs()
		if err != nil {
			return VTEPFilter{}, err
		}
		if port != 0 {
			out.Port = port
		}
		out.VTEPs = append(out.VTEPs, vteps...)
	}
	slices.SortFunc(out.VTEPs, netip.Addr.Compare)
	return out, nil
}

// vtepFilters are the families' filters, IPv4 first.
func (d *Dataplane) vtepFilters() ([]vtepFilter, error) {
	var out []vtepFilter
	for _, fw := range d.firewalls() {
		f, ok := fw.(vtepFilter)
		if !ok {
			return nil, fmt.Errorf("the VXLAN port filter is not implemented for the %s backend yet; run serve --firewall %s for cluster networks", fw.family(), model.FirewallIPTables)
		}
		out = append(out, f)
	}
	return out, nil
}

// vtepChain is the rules of the filter chain, in order, canonical.
func (f *iptablesFirewall) vtepChain(vteps []netip.Addr) []string {
	sorted := slices.Clone(vteps)
	slices.SortFunc(sorted, netip.Addr.Compare)
	sorted = slices.Compact(sorted)
	var out []string
	for _, v := range sorted {
		out = append(out, canonical([]string{"-s", v.String(), "-j", "ACCEPT"}))
	}
	return append(out, canonical([]string{"-j", "DROP"}))
}

// vtepHook is the jump from INPUT into the filter chain for port.
func (f *iptablesFirewall) vtepHook(port int) string {
	return canonical([]string{"-p", "udp", "--dport", strconv.Itoa(port), "-m", "comment", "--comment", model.HookComment(f.instance), "-j", model.VXLANChain(f.instance)})
}

// vtepHooks are the rules of rs's filter table that jump into the chain,
// by chain.
func (f *iptablesFirewall) vtepHooks(rs ruleset) []txRule {
	chain := model.VXLANChain(f.instance)
	var out []txRule
	tr := rs.table(model.TableFilter)
	for _, c := range slices.Sorted(maps.Keys(tr.chains)) {
		for _, spec := range tr.chains[c] {
			if args := splitRule(spec); len(args) >= 2 && args[len(args)-2] == "-j" && args[len(args)-1] == chain {
				out = append(out, txRule{model.TableFilter, c, spec})
			}
		}
	}
	return out
}

func (f *iptablesFirewall) syncVTEPs(ctx context.Context, port int, vteps []netip.Addr) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, err := f.read()
	if err != nil {
		return false, fmt.Errorf("VXLAN port filter: %w", err)
	}
	chain := model.VXLANChain(f.instance)
	filter := rs.table(model.TableFilter)
	var t tx
	if !filter.hasChain(chain) {
		t.line(model.TableFilter, "-N "+chain)
	}
	if want := f.vtepChain(vteps); !slices.Equal(filter.chains[chain], want) {
		// Rewritten whole in the table's one commit: no packet sees the
		// chain half-written.
		t.line(model.TableFilter, "-F "+chain)
		for _, spec := range want {
			t.line(model.TableFilter, "-A "+chain+" "+spec)
		}
	}
	hook, hooked := f.vtepHook(port), false
	for _, h := range f.vtepHooks(rs) {
		if h.chain == "INPUT" && h.spec == hook && !hooked {
			hooked = true
			continue
		}
		// Another port's, or a duplicate.
		t.line(h.table, "-D "+h.chain+" "+h.spec)
	}
	if !hooked {
		t.line(model.TableFilter, "-I INPUT 1 "+hook)
	}
	if t.empty() {
		return false, nil
	}
	return true, f.commit(ctx, &t, "the VXLAN port filter", nil)
}

func (f *iptablesFirewall) removeVTEPs() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, err := f.read()
	if err != nil {
		return fmt.Errorf("remove the VXLAN port filter: %w", err)
	}
	var t tx
	for _, h := range f.vtepHooks(rs) {
		t.line(h.table, "-D "+h.chain+" "+h.spec)
	}
	if chain := model.VXLANChain(f.instance); rs.table(model.TableFilter).hasChain(chain) {
		t.line(model.TableFilter, "-F "+chain)
		t.line(model.TableFilter, "-X "+chain)
	}
	if t.empty() {
		return nil
	}
	if err := f.restore(&t); err != nil {
		return fmt.Errorf("remove the VXLAN port filter (%s): %w", f.family(), err)
	}
	return nil
}

func (f *iptablesFirewall) readVTEPs() (int, []netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, err := f.read()
	if err != nil {
		return 0, nil, err
	}
	port := 0
	for _, h := range f.vtepHooks(rs) {
		args := splitRule(h.spec)
		if i := slices.Index(args, "--dport"); h.chain == "INPUT" && i >= 0 && i+1 < len(args) {
			port, _ = strconv.Atoi(args[i+1])
		}
	}
	var vteps []netip.Addr
	for _, spec := range rs.table(model.TableFilter).chains[model.VXLANChain(f.instance)] {
		args := splitRule(spec)
		if len(args) == 4 && args[0] == "-s" && args[3] == "ACCEPT" {
			if p, err := netip.ParsePrefix(args[1]); err == nil && p.IsSingleIP() {
				vteps = append(vteps, p.Addr())
			}
		}
	}
	return port, vteps, nil
}
