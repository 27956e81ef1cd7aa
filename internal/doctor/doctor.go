// Package doctor is `mynet doctor`: it checks the host prerequisites, the
// iptables backend against Docker's, the daemon's socket, and compares the
// daemon's state (asked over its socket) with the kernel objects tagged
// with its name, printing each problem with the command that fixes it.
package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
	"github.com/mynet/mynet/state"
)

// Finding statuses. Only problems make the exit status non-zero.
const (
	statusOK      = "ok"
	statusInfo    = "info"
	statusProblem = "problem"
	statusSkipped = "skipped"
)

// finding is one check's result.
type finding struct {
	Check   string
	Status  string
	Message string
	// Fix is the command (or commands, one a line) that fixes a problem.
	Fix string `json:",omitempty"`
}

// doctorReport is what doctor prints.
type doctorReport struct {
	Instance string
	Socket   string
	// DaemonPID is the daemon's process ID as seen from here, from the
	// socket's peer credentials; 0 when it did not answer.
	DaemonPID int `json:",omitempty"`
	Findings  []finding
	Problems  int
}

// doctor holds one run's inputs and findings.
type doctor struct {
	t   cli.Target
	env *cli.Env
	// procSys and procNet are /proc/sys and the calling thread's
	// /proc/<tid>/net; tests point procSys elsewhere.
	procSys, procNet string
	// stateFetch asks the daemon for its state.
	stateFetch func(ctx context.Context, socket string) (*plugin.Dump, error)

	report doctorReport
	pid    int
	docker map[string]cli.DockerNetwork
}

func newDoctor(t cli.Target, env *cli.Env) *doctor {
	return &doctor{t: t, env: env, procSys: "/proc/sys", procNet: "/proc/thread-self/net", stateFetch: cli.FetchState}
}

func (d *doctor) add(check, status, msg, fix string) {
	d.report.Findings = append(d.report.Findings, finding{Check: check, Status: status, Message: msg, Fix: fix})
	if status == statusProblem {
		d.report.Problems++
	}
}

// Run is `mynet doctor`.
func Run(args []string, env *cli.Env) error {
	cf, pos, done, err := cli.ParseCommand("doctor", "usage: mynet doctor [--name NAME | --socket PATH | --plugin NAME:TAG] [--instance NAME] [--format table|json]\n\n"+
		"Checks the host and the daemon's objects; prints each problem with its fix and exits 1 if there is one. Run it as root on the host.\n\n", true, args)
	if done || err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("doctor takes no arguments, got %q", pos)
	}
	ctx := context.Background()
	t, err := cf.Resolve(ctx, env)
	if err != nil {
		return err
	}
	doc := newDoctor(t, env)
	rep := doc.run(ctx)
	if cf.Format == "json" {
		err = cli.WriteJSON(env.Stdout, rep)
	} else {
		err = writeDoctor(env.Stdout, rep)
	}
	if err != nil {
		return err
	}
	if rep.Problems > 0 {
		return fmt.Errorf("doctor found %d problem%s", rep.Problems, plural(rep.Problems))
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// run performs every check. The kernel is read twice around a second
// state fetch, so that an object created or deleted by a request while
// the doctor looks is not reported: only what both reads agree on counts.
// Everything runs on the calling goroutine (netlink, iptables children),
// so it sees the calling thread's network namespace.
func (d *doctor) run(ctx context.Context) doctorReport {
	d.report = doctorReport{Instance: d.t.Instance, Socket: d.t.Socket}
	st1 := d.checkSocket(ctx)
	d.report.DaemonPID = d.pid
	if st1 != nil && d.env.DockerNetworks != nil {
		var ids []string
		for _, n := range st1.Networks {
			ids = append(ids, n.ID)
		}
		d.docker, _ = d.env.DockerNetworks(ctx, ids)
	}
	d.checkSysctls(st1)

	nl, err := netlink.NewHandle()
	if err != nil {
		d.add("kernel", statusSkipped, "open netlink: "+err.Error(), "")
		return d.report
	}
	defer nl.Close()
	sc1 := d.scan(ctx, nl)
	if sc1.linkErr != nil {
		d.add("links", statusSkipped, "list links: "+sc1.linkErr.Error(), "")
	}
	d.detectInstance(st1, sc1)
	rules := d.checkBackend(ctx, sc1)
	switch {
	case rules != "":
	case os.Geteuid() != 0:
		d.add("iptables", statusSkipped, "reading iptables needs root: run mynet doctor as root", "")
	default:
		d.add("iptables", statusSkipped, "no iptables rules could be read (is the iptables package installed?)", "")
	}

	if st1 == nil {
		d.add("state", statusSkipped, "no state from the daemon: state records whose kernel objects are missing were not checked", "")
		if sc1.linkErr == nil {
			d.checkTaggedOffline(sc1)
		}
		return d.report
	}
	st2, err := d.stateFetch(ctx, d.t.Socket)
	if err != nil {
		d.add("state", statusSkipped, "the daemon stopped answering: "+err.Error(), "")
		return d.report
	}
	sc2 := d.scan(ctx, nl)
	problems := d.report.Problems
	if sc1.linkErr == nil && sc2.linkErr == nil {
		d.checkMissingLinks(st1, st2, sc1, sc2)
		d.checkOrphanLinks(st2, sc1, sc2)
	}
	if rules != "" {
		d.checkRules(st1, st2, sc1, sc2, rules)
	}
	if d.report.Problems == problems {
		d.add("state", statusOK, fmt.Sprintf("%d network%s and %d endpoint%s in the state match the kernel", len(st2.Networks), plural(len(st2.Networks)), len(st2.Endpoints), plural(len(st2.Endpoints))), "")
	}
	return d.report
}

// reconcileFix is how to make the daemon repair its objects now; does
// says what the reconcile does about this problem.
func (d *doctor) reconcileFix(does string) string {
	if d.pid > 0 {
		return fmt.Sprintf("kill -HUP %d   # mynet's full reconcile %s; if that fails, its log says why", d.pid, does)
	}
	return d.t.Restart + "   # the startup reconcile " + does
}

const (
	rebuilds = "rebuilds it"
	dropsEp  = "drops the stale endpoint"
)

// checkSocket checks the socket's permissions and that the daemon answers,
// and returns its state (nil when it does not answer).
func (d *doctor) checkSocket(ctx context.Context) *plugin.Dump {
	sock := d.t.Socket
	start := d.t.Restart
	if d.t.Plugin != "" {
		start = "docker plugin enable " + d.t.Plugin
	}
	fi, err := os.Stat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.add("socket", statusProblem, "no socket at "+sock+": the daemon is not running, or was started with another --name", start)
		return nil
	case err != nil:
		d.add("socket", statusProblem, "cannot check "+sock+": "+err.Error(), "run mynet doctor as root")
		return nil
	case fi.Mode()&fs.ModeSocket == 0:
		d.add("socket", statusProblem, sock+" is not a socket ("+fi.Mode().String()+")", "rm "+sock+" && "+start)
		return nil
	}
	problems := d.report.Problems
	if perm := fi.Mode().Perm(); perm != 0o660 {
		d.add("socket", statusProblem, fmt.Sprintf("%s has mode %04o, want 0660: %s", sock, perm, modeRisk(perm)), "chmod 0660 "+sock)
	}
	owner, group := -1, -1
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner, group = int(sys.Uid), int(sys.Gid)
		if owner != 0 {
			d.add("socket", statusProblem, fmt.Sprintf("%s is owned by %s, want root: that user can drive the plugin", sock, userName(owner)), "chown root "+sock)
		}
	}
	pid, err := peerPID(sock)
	if err != nil {
		d.add("socket", statusProblem, cli.SocketError(sock, err).Error(), d.t.Restart)
		return nil
	}
	d.pid = pid
	st, err := d.stateFetch(ctx, sock)
	if err != nil {
		d.add("socket", statusProblem, err.Error(), d.t.Restart)
		return nil
	}
	if d.report.Problems == problems {
		d.add("socket", statusOK, fmt.Sprintf("%s answers (daemon pid %d); mode 0660, owner root, group %s", sock, pid, groupName(group)), "")
	}
	return st
}

func modeRisk(perm fs.FileMode) string {
	if perm&0o007 != 0 {
		return "any local user can create networks and change the host's firewall through it"
	}
	if perm&0o600 != 0o600 {
		return "root cannot use it; dockerd cannot reach the plugin"
	}
	return "mynet creates it 0660"
}

// peerPID connects to the socket and returns the listening process's ID.
func peerPID(sock string) (int, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username + " (" + strconv.Itoa(uid) + ")"
	}
	return "uid " + strconv.Itoa(uid)
}

func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}

// checkSysctls checks forwarding and br_netfilter.
func (d *doctor) checkSysctls(st *plugin.Dump) {
	switch v, err := d.sysctl("net/ipv4/ip_forward"); {
	case err != nil:
		d.add("ip_forward", statusProblem, "cannot read net.ipv4.ip_forward: "+err.Error(), "")
	case v != "1":
		d.add("ip_forward", statusProblem, "net.ipv4.ip_forward = "+v+": containers cannot reach beyond their bridge (mynet turns it on at start and at each network create; something turned it off since)", "sysctl -w net.ipv4.ip_forward=1")
	default:
		d.add("ip_forward", statusOK, "net.ipv4.ip_forward = 1", "")
	}
	keys := []string{"bridge-nf-call-iptables"}
	if st != nil && slices.ContainsFunc(st.Networks, func(n state.Network) bool { return len(n.IPv6) > 0 }) {
		keys = append(keys, "bridge-nf-call-ip6tables")
	}
	for _, k := range keys {
		v, err := d.sysctl("net/bridge/" + k)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			d.add("br_netfilter", statusProblem, "the br_netfilter module is not loaded: traffic between containers of one bridge bypasses iptables, so icc=false is not enforced (mynet refuses such networks)", "modprobe br_netfilter")
			return
		case err != nil:
			d.add("br_netfilter", statusProblem, "cannot read net.bridge."+k+": "+err.Error(), "")
		case v != "1":
			d.add("br_netfilter", statusProblem, "net.bridge."+k+" = "+v+": traffic between containers of one bridge bypasses iptables, so icc=false is not enforced", "sysctl -w net.bridge."+k+"=1")
		default:
			d.add("br_netfilter", statusOK, "br_netfilter loaded, net.bridge."+k+" = 1", "")
		}
	}
}

func (d *doctor) sysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.procSys, key))
	return strings.TrimSpace(string(b)), err
}

// linkInfo is one link, as the doctor needs it.
type linkInfo struct {
	name, alias, kind string
	index, master     int
}

// tableDump is `iptables -S` of one table in one backend and family.
type tableDump struct {
	family  string // iptables or ip6tables
	backend string // nf_tables or legacy
	bin     string // the binary that reads and changes it
	table   string
	lines   []string
}

// scan is one read of the kernel objects the doctor looks at.
type scan struct {
	links   map[string]linkInfo
	linkErr error
	dumps   []tableDump
}

const (
	backendNFT    = "nf_tables"
	backendLegacy = "legacy"
)

func (d *doctor) scan(ctx context.Context, nl *netlink.Handle) scan {
	var sc scan
	links, err := nl.LinkList()
	for i := 0; i < 5 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		links, err = nl.LinkList()
	}
	if err != nil {
		sc.linkErr = err
	} else {
		sc.links = map[string]linkInfo{}
		for _, l := range links {
			a := l.Attrs()
			sc.links[a.Name] = linkInfo{name: a.Name, alias: a.Alias, kind: l.Type(), index: a.Index, master: a.MasterIndex}
		}
	}
	if os.Geteuid() != 0 {
		return sc
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{backendNFT, backendLegacy} {
			bin := backendBinary(ctx, family, backend)
			if bin == "" {
				continue
			}
			for _, table := range []string{"filter", "nat"} {
				// Listing a legacy table creates it, after which every
				// iptables-nft call warns about legacy tables: only read
				// the ones that exist.
				if backend == backendLegacy && !d.legacyTableExists(family, table) {
					continue
				}
				lines, err := iptablesDump(ctx, bin, table)
				if err != nil {
					continue
				}
				sc.dumps = append(sc.dumps, tableDump{family: family, backend: backend, bin: bin, table: table, lines: lines})
			}
		}
	}
	return sc
}

// backendBinary finds the binary of one backend: iptables-nft or
// iptables-legacy, else plain iptables when it is of that backend.
func backendBinary(ctx context.Context, family, backend string) string {
	suffix := "-nft"
	if backend == backendLegacy {
		suffix = "-legacy"
	}
	if p, err := exec.LookPath(family + suffix); err == nil {
		return p
	}
	if p, err := exec.LookPath(family); err == nil && iptablesBackend(ctx, p) == backend {
		return p
	}
	return ""
}

// iptablesBackend runs BIN --version: "iptables v1.8.9 (nf_tables)".
func iptablesBackend(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	if bytes.Contains(out, []byte("nf_tables")) {
		return backendNFT
	}
	return backendLegacy
}

func (d *doctor) legacyTableExists(family, table string) bool {
	f := "ip_tables_names"
	if family == "ip6tables" {
		f = "ip6_tables_names"
	}
	b, err := os.ReadFile(filepath.Join(d.procNet, f))
	if err != nil {
		return false
	}
	return slices.Contains(strings.Fields(string(b)), table)
}

func iptablesDump(ctx context.Context, bin, table string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-w", "10", "-t", table, "-S")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s -S: %w: %s", bin, table, err, strings.TrimSpace(errOut.String()))
	}
	var lines []string
	s := bufio.NewScanner(&out)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, s.Err()
}

func hasChain(lines []string, match func(string) bool) bool {
	for _, l := range lines {
		if name, ok := strings.CutPrefix(l, "-N "); ok && match(name) {
			return true
		}
	}
	return false
}

func isDockerChain(name string) bool { return name == "DOCKER" || strings.HasPrefix(name, "DOCKER-") }

// instanceChains is the set of chain names of the instance.
func instanceChains(instance string) map[string]bool {
	filter, nat := model.ChainsFor(instance).ByTable()
	m := map[string]bool{}
	for _, c := range append(filter, nat...) {
		m[c] = true
	}
	return m
}

// detectInstance reads the instance name from the tags of the bridges of
// the daemon's networks: a managed plugin's --name is not visible from here.
func (d *doctor) detectInstance(st *plugin.Dump, sc scan) {
	if st == nil || sc.links == nil {
		return
	}
	for _, n := range st.Networks {
		l, ok := sc.links[n.Bridge]
		if !ok {
			continue
		}
		tag, ok := model.ParseTag(l.alias)
		inst := tag.Instance
		if !ok || tag.Kind != model.KindNetwork || tag.ID != n.ID || inst == d.t.Instance || !cli.ValidName(inst) {
			continue
		}
		if d.t.InstanceKnown {
			d.add("instance", statusProblem, fmt.Sprintf("the daemon's bridges are tagged for instance %q, not %q: the checks below look for the wrong tags and chains", inst, d.t.Instance), "mynet doctor --socket "+d.t.Socket+" --instance "+inst)
			return
		}
		d.add("instance", statusInfo, fmt.Sprintf("the daemon's bridges are tagged for instance %q: checking its tags and chains", inst), "")
		d.t.Instance, d.report.Instance = inst, inst
		return
	}
}

// checkBackend compares the backend holding mynet's chains (or, before it
// made any, the one of the iptables on PATH) with the one holding Docker's,
// and reports the FORWARD policy. It returns mynet's backend, "" when the
// rules could not be read.
func (d *doctor) checkBackend(ctx context.Context, sc scan) string {
	if len(sc.dumps) == 0 {
		return ""
	}
	own := instanceChains(d.t.Instance)
	dockerIn, mynetIn := map[string]bool{}, map[string]bool{}
	for _, td := range sc.dumps {
		if td.family == "iptables" && hasChain(td.lines, isDockerChain) {
			dockerIn[td.backend] = true
		}
		if hasChain(td.lines, func(c string) bool { return own[c] }) {
			mynetIn[td.backend] = true
		}
	}
	var mine, how string
	switch {
	case len(mynetIn) == 2:
		other := backendLegacy
		if !dockerIn[backendNFT] && dockerIn[backendLegacy] {
			other = backendNFT
		}
		d.add("iptables_backend", statusProblem, "mynet's chains exist in both nf_tables and legacy iptables: the "+other+" ones are left over from a backend switch and no longer maintained",
			d.chainRemovalFix(sc, other))
		mine, how = backendNFT, "its chains"
		if other == backendNFT {
			mine = backendLegacy
		}
	case len(mynetIn) == 1:
		for b := range mynetIn {
			mine = b
		}
		how = "its chains are there"
	default:
		if p, err := exec.LookPath("iptables"); err == nil {
			mine, how = iptablesBackend(ctx, p), "the iptables on PATH, which mynet uses"
		}
	}
	var docker []string
	for _, b := range []string{backendNFT, backendLegacy} {
		if dockerIn[b] {
			docker = append(docker, b)
		}
	}
	switch {
	case len(docker) == 0:
		d.add("iptables_backend", statusInfo, fmt.Sprintf("no Docker chains in nf_tables or legacy iptables: dockerd is not running here, or runs with --iptables=false; mynet uses %s (%s)", cli.OrDash(mine), how), "")
	case mine != "" && !dockerIn[mine]:
		want := docker[0]
		suffix := "nft"
		if want == backendLegacy {
			suffix = "legacy"
		}
		d.add("iptables_backend", statusProblem, fmt.Sprintf("mynet uses %s (%s) but Docker's rules are in %s: Docker's chains and mynet's do not see each other, so the isolation from Docker's networks and the DOCKER-USER hook do not work", mine, how, want),
			fmt.Sprintf("update-alternatives --set iptables /usr/sbin/iptables-%s && update-alternatives --set ip6tables /usr/sbin/ip6tables-%s && %s", suffix, suffix, d.t.Restart))
	default:
		d.add("iptables_backend", statusOK, fmt.Sprintf("mynet and Docker both use %s (%s)", mine, how), "")
		if len(docker) == 2 {
			d.add("iptables_backend", statusInfo, "Docker chains exist in both nf_tables and legacy iptables: one set is left over from an earlier backend", "")
		}
	}
	// The FORWARD policy of the backend that matters.
	for _, td := range sc.dumps {
		if td.family != "iptables" || td.table != "filter" || (mine != "" && td.backend != mine) {
			continue
		}
		for _, l := range td.lines {
			if policy, ok := strings.CutPrefix(l, "-P FORWARD "); ok {
				if policy == "DROP" {
					d.add("forward_policy", statusInfo, "FORWARD policy is DROP (Docker sets it): fine, mynet accepts its own traffic explicitly", "")
				} else {
					d.add("forward_policy", statusInfo, "FORWARD policy is "+policy, "")
				}
				break
			}
		}
		break
	}
	return mine
}

// chainRemovalFix deletes an instance's chains, and the jumps into them, in
// one backend.
func (d *doctor) chainRemovalFix(sc scan, backend string) string {
	own := instanceChains(d.t.Instance)
	var jumps, flushes, deletes []string
	for _, td := range sc.dumps {
		if td.backend != backend {
			continue
		}
		for _, l := range td.lines {
			if rest, ok := strings.CutPrefix(l, "-A "); ok {
				chain, _, _ := strings.Cut(rest, " ")
				target := jumpTarget(l)
				if own[target] && !own[chain] {
					jumps = append(jumps, td.bin+" -t "+td.table+" -D "+rest)
				}
			}
			if c, ok := strings.CutPrefix(l, "-N "); ok && own[c] {
				flushes = append(flushes, td.bin+" -t "+td.table+" -F "+c)
				deletes = append(deletes, td.bin+" -t "+td.table+" -X "+c)
			}
		}
	}
	return strings.Join(slices.Concat(jumps, flushes, deletes), "\n")
}

func jumpTarget(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// linkTag is the alias the daemon gives its links (see model.Tag); a
// daemon that reports no generation writes the earlier release's tags.
func linkTag(instance string, st *plugin.Dump, kind, id string) string {
	return model.Tag{Instance: instance, Generation: st.Generation, Kind: kind, ID: id}.String()
}

// stable returns the records present, and not pending, in both reads.
func stableNetworks(a, b *plugin.Dump) []state.Network {
	in := map[string]bool{}
	for _, n := range a.Networks {
		if !n.Pending {
			in[n.ID] = true
		}
	}
	var out []state.Network
	for _, n := range b.Networks {
		if in[n.ID] && !n.Pending {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(x, y state.Network) int { return strings.Compare(x.ID, y.ID) })
	return out
}

func stableEndpoints(a, b *plugin.Dump) []state.Endpoint {
	in := map[string]bool{}
	for _, e := range a.Endpoints {
		if !e.Pending {
			in[e.ID] = true
		}
	}
	var out []state.Endpoint
	for _, e := range b.Endpoints {
		if in[e.ID] && !e.Pending {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(x, y state.Endpoint) int { return strings.Compare(x.ID, y.ID) })
	return out
}

func (d *doctor) networkName(id string) string {
	s := model.Short(id)
	if n, ok := d.docker[id]; ok && n.Name != "" {
		s += " (" + n.Name + ")"
	}
	return s
}

// checkMissingLinks reports state records whose bridge or veth is missing
// or not mynet's.
func (d *doctor) checkMissingLinks(st1, st2 *plugin.Dump, sc1, sc2 scan) {
	nets := stableNetworks(st1, st2)
	bridges := map[string]linkInfo{}
	for _, n := range nets {
		l1, ok1 := sc1.links[n.Bridge]
		l2, ok2 := sc2.links[n.Bridge]
		tag := linkTag(d.t.Instance, st2, model.KindNetwork, n.ID)
		switch {
		case !ok1 && !ok2:
			d.add("missing_bridge", statusProblem, fmt.Sprintf("bridge %s of network %s is missing: its containers are cut off", n.Bridge, d.networkName(n.ID)), d.reconcileFix(rebuilds))
		case ok1 && ok2 && l1.alias != tag && l2.alias != tag:
			d.add("missing_bridge", statusProblem, fmt.Sprintf("interface %s, the bridge of network %s, is not mynet's (type %s, alias %q)", n.Bridge, d.networkName(n.ID), l2.kind, l2.alias),
				fmt.Sprintf("ip link del %s   # if nothing else needs it; then: %s", n.Bridge, d.reconcileFix(rebuilds)))
		case ok2:
			bridges[n.ID] = l2
		}
	}
	known := map[string]bool{}
	for _, n := range nets {
		known[n.ID] = true
	}
	for _, e := range stableEndpoints(st1, st2) {
		if !known[e.NetworkID] {
			continue
		}
		l1, ok1 := sc1.links[e.HostVeth]
		l2, ok2 := sc2.links[e.HostVeth]
		tag := linkTag(d.t.Instance, st2, model.KindEndpoint, e.ID)
		what := fmt.Sprintf("endpoint %s (%s) of network %s", model.Short(e.ID), d.endpointName(e), d.networkName(e.NetworkID))
		switch {
		case !ok1 && !ok2:
			d.add("missing_veth", statusProblem, fmt.Sprintf("host veth %s of %s is missing: its container has no network", e.HostVeth, what),
				d.reconcileFix(dropsEp)+"\n"+d.reconnectFix(e))
		case ok1 && ok2 && l1.alias != tag && l2.alias != tag:
			d.add("missing_veth", statusProblem, fmt.Sprintf("interface %s, the host veth of %s, is not mynet's (alias %q)", e.HostVeth, what, l2.alias),
				d.reconcileFix(dropsEp)+"\n"+d.reconnectFix(e))
		case ok1 && ok2:
			if br, ok := bridges[e.NetworkID]; ok && l1.master != br.index && l2.master != br.index {
				d.add("missing_veth", statusProblem, fmt.Sprintf("host veth %s of %s is not on bridge %s", e.HostVeth, what, br.name),
					fmt.Sprintf("ip link set %s master %s", e.HostVeth, br.name))
			}
		}
	}
}

func (d *doctor) endpointName(e state.Endpoint) string {
	parts := []string{}
	if c := d.docker[e.NetworkID].ContainerOf(e.ID); c != "" {
		parts = append(parts, "container "+c)
	}
	for _, a := range []string{e.IPv4, e.IPv6} {
		if a != "" {
			parts = append(parts, a)
		}
	}
	if len(parts) == 0 {
		return "no address"
	}
	return strings.Join(parts, ", ")
}

func (d *doctor) reconnectFix(e state.Endpoint) string {
	nw, ctr := model.Short(e.NetworkID), "CONTAINER"
	if n, ok := d.docker[e.NetworkID]; ok {
		if n.Name != "" {
			nw = n.Name
		}
		if c := n.ContainerOf(e.ID); c != "" {
			ctr = c
		}
	}
	return fmt.Sprintf("docker network disconnect -f %s %s && docker network connect %s %s   # if the container still runs", nw, ctr, nw, ctr)
}

// checkOrphanLinks reports links tagged with the instance whose network or
// endpoint the state does not know.
func (d *doctor) checkOrphanLinks(st *plugin.Dump, sc1, sc2 scan) {
	nets, eps := map[string]bool{}, map[string]bool{}
	for _, n := range st.Networks {
		nets[n.ID] = true
	}
	for _, e := range st.Endpoints {
		eps[e.ID] = true
	}
	var names []string
	for name := range sc2.links {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l := sc2.links[name]
		if l1, ok := sc1.links[name]; !ok || l1.alias != l.alias {
			continue
		}
		tag, ok := model.ParseTag(l.alias)
		if !ok || tag.Instance != d.t.Instance {
			continue
		}
		if tag.Generation != st.Generation {
			d.addForeignLink(name, tag, st.Generation)
			continue
		}
		switch {
		case tag.Kind == model.KindNetwork && !nets[tag.ID]:
			d.add("orphan_link", statusProblem, fmt.Sprintf("bridge %s is tagged with network %s, which the state does not know", name, model.Short(tag.ID)), "ip link del "+name)
		case tag.Kind == model.KindEndpoint && !eps[tag.ID]:
			d.add("orphan_link", statusProblem, fmt.Sprintf("veth %s is tagged with endpoint %s, which the state does not know", name, model.Short(tag.ID)), "ip link del "+name)
		}
	}
}

// ownedRule is a rule in one of the instance's chains that names a network.
type ownedRule struct {
	dump            *tableDump
	chain, rest     string // rest: the line without "-A "
	network, endpnt string
}

func (d *doctor) ownedRules(sc scan, backend string) []ownedRule {
	own := instanceChains(d.t.Instance)
	var out []ownedRule
	for i := range sc.dumps {
		td := &sc.dumps[i]
		if td.backend != backend {
			continue
		}
		for _, l := range td.lines {
			rest, ok := strings.CutPrefix(l, "-A ")
			if !ok {
				continue
			}
			chain, _, _ := strings.Cut(rest, " ")
			nid, eid, ok := model.ParseRuleComment(l)
			if !own[chain] || !ok {
				continue
			}
			out = append(out, ownedRule{dump: td, chain: chain, rest: rest, network: nid, endpnt: eid})
		}
	}
	return out
}

// checkRules reports rules of networks and endpoints the state does not
// know, networks of the state without rules, and a missing jump into
// mynet's chains.
func (d *doctor) checkRules(st1, st2 *plugin.Dump, sc1, sc2 scan, backend string) {
	nets, eps := map[string]bool{}, map[string]bool{}
	for _, n := range st2.Networks {
		nets[n.ID] = true
	}
	for _, e := range st2.Endpoints {
		eps[e.ID] = true
	}
	before := map[string]bool{}
	for _, r := range d.ownedRules(sc1, backend) {
		before[r.dump.family+" "+r.dump.table+" "+r.rest] = true
	}
	type group struct {
		network, family string
		chains          []string
		fixes           []string
	}
	var groups []*group
	byKey := map[string]*group{}
	withRules := map[string]bool{} // family + network
	for _, r := range d.ownedRules(sc2, backend) {
		withRules[r.dump.family+" "+r.network] = true
		if !before[r.dump.family+" "+r.dump.table+" "+r.rest] || (nets[r.network] && (r.endpnt == "" || eps[r.endpnt])) {
			continue
		}
		key := r.dump.family + " " + r.network
		g := byKey[key]
		if g == nil {
			g = &group{network: r.network, family: r.dump.family}
			byKey[key] = g
			groups = append(groups, g)
		}
		if !slices.Contains(g.chains, r.chain) {
			g.chains = append(g.chains, r.chain)
		}
		g.fixes = append(g.fixes, r.dump.bin+" -t "+r.dump.table+" -D "+r.rest)
	}
	for _, g := range groups {
		what := "network " + model.Short(g.network) + ", which the state does not know"
		if nets[g.network] {
			what = "endpoints of network " + model.Short(g.network) + " that the state does not know"
		}
		d.add("orphan_rule", statusProblem, fmt.Sprintf("%d %s rule%s in %s name %s", len(g.fixes), g.family, plural(len(g.fixes)), strings.Join(g.chains, ", "), what), strings.Join(g.fixes, "\n"))
	}

	// Networks of the state whose rules are gone.
	families := map[string]bool{}
	for _, td := range sc2.dumps {
		if td.backend == backend {
			families[td.family] = true
		}
	}
	filterChains, _ := model.ChainsFor(d.t.Instance).ByTable()
	for _, n := range stableNetworks(st1, st2) {
		for _, fam := range []string{"iptables", "ip6tables"} {
			subnets := n.IPv4
			if fam == "ip6tables" {
				subnets = n.IPv6
			}
			if len(subnets) == 0 || !families[fam] || withRules[fam+" "+n.ID] {
				continue
			}
			d.add("missing_rules", statusProblem, fmt.Sprintf("network %s has no %s rules in mynet's chains: its isolation, egress and masquerading are gone", d.networkName(n.ID), fam), d.reconcileFix(rebuilds))
		}
	}
	if len(nets) == 0 || len(filterChains) == 0 {
		return
	}
	fwd := filterChains[0]
	for _, td := range sc2.dumps {
		if td.backend != backend || td.family != "iptables" || td.table != "filter" {
			continue
		}
		hooked := false
		for _, l := range td.lines {
			if (strings.HasPrefix(l, "-A FORWARD ") || strings.HasPrefix(l, "-A DOCKER-USER ")) && jumpTarget(l) == fwd {
				hooked = true
			}
		}
		if !hooked {
			d.add("missing_rules", statusProblem, "no jump from FORWARD or DOCKER-USER into "+fwd+": mynet's accepts are never reached, so with a DROP policy its containers cannot reach anything", d.reconcileFix(rebuilds))
		}
	}
}

// writeDoctor prints the findings as a table, each fix under its problem.
func writeDoctor(w io.Writer, rep doctorReport) error {
	fmt.Fprintf(w, "mynet doctor: instance %s, socket %s\n\n", rep.Instance, rep.Socket)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tDETAIL")
	for _, f := range rep.Findings {
		status := f.Status
		if status == statusProblem {
			status = "PROBLEM"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", status, f.Check, f.Message)
		for i, l := range strings.Split(f.Fix, "\n") {
			if l == "" {
				continue
			}
			label := "fix: "
			if i > 0 {
				label = "     "
			}
			fmt.Fprintf(tw, "\t\t%s%s\n", label, l)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Problems == 0 {
		_, err := fmt.Fprintln(w, "\nno problems found")
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d problem%s found\n", rep.Problems, plural(rep.Problems))
	return err
}
