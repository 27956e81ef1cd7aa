// Package doctor is `mynet doctor`: it checks the host prerequisites, the
// iptables backend against Docker's, the daemon's socket, and compares the
// daemon's state (asked over its socket) with the kernel objects tagged
// with its name, printing each problem with the command that fixes it.
package doctor

import (
	"context"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/internal/peers"
	"github.com/mynet/mynet/plugin"
)

// Finding statuses. Only problems make the exit status non-zero.
const (
	statusOK      = "ok"
	statusInfo    = "info"
	statusProblem = "problem"
	statusSkipped = "skipped"
	// statusWarning is a risk that needs no repair, such as an untested
	// engine: printed with its fix, not counted as a problem.
	statusWarning = "warning"
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
	// Engine is the Docker engine's version, when the docker CLI answered.
	Engine string `json:",omitempty"`
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
	// stateFetch asks the daemon for its state; cmdline reads a
	// process's arguments (the daemon's --firewall).
	stateFetch func(ctx context.Context, socket string) (*plugin.Dump, error)
	// clusterFetch asks the daemon for its cluster status (cluster mode).
	clusterFetch func(ctx context.Context, socket string) (*peers.Report, error)
	cmdline      func(pid int) ([]string, error)
	// forwardRules reads iptables' or ip6tables' FORWARD chain.
	forwardRules func(cmd string) []string

	report doctorReport
	pid    int
	docker map[string]cli.DockerNetwork
}

func newDoctor(t cli.Target, env *cli.Env) *doctor {
	return &doctor{t: t, env: env, procSys: "/proc/sys", procNet: "/proc/thread-self/net", stateFetch: cli.FetchState, clusterFetch: cli.FetchCluster, cmdline: procCmdline, forwardRules: iptablesForward}
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
	if d.env.DockerVersion != nil {
		d.checkEngine(ctx)
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
	fw := d.checkFirewall()
	rules := ""
	if fw != model.FirewallNFTables {
		rules = d.checkBackend(ctx, sc1)
	}
	switch {
	case fw == model.FirewallNFTables:
		d.checkNFTForwardPolicy()
		d.add("iptables", statusInfo, "mynet's rules are in nftables (table ip/ip6 "+model.NFTTableName(d.t.Instance)+"): the iptables checks do not apply", "")
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
	d.checkOwnRules(fw, rules, st1, st2, sc1, sc2)
	if d.report.Problems == problems {
		d.add("state", statusOK, fmt.Sprintf("%d network%s and %d endpoint%s in the state match the kernel", len(st2.Networks), plural(len(st2.Networks)), len(st2.Endpoints), plural(len(st2.Endpoints))), "")
	}
	if st2.ClusterMode {
		d.checkCluster(ctx, nl)
	}
	return d.report
}

// checkOwnRules compares mynet's rules with the state in the backend that
// holds them.
func (d *doctor) checkOwnRules(fw, iptablesBackend string, st1, st2 *plugin.Dump, sc1, sc2 scan) {
	if iptablesBackend != "" {
		d.checkRules(st1, st2, sc1, sc2, iptablesBackend)
	} else if fw == model.FirewallNFTables {
		d.checkNFTRules(st1, st2)
	}
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
