package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mynet/mynet/internal/peers"
)

const clusterUsage = `usage: mynet cluster hosts|networks [--name NAME | --socket PATH | --plugin NAME:TAG] [--format table|json]

Shows the cluster as this host's daemon sees it (serve --cluster-store):
  hosts     the registered hosts: ID, VTEP, alive, dead since
  networks  this host's cluster networks: subnet, VNI, members, remote
            peers and FDB entries

`

// RunCluster is `mynet cluster hosts|networks`.
func RunCluster(args []string, env *Env) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(env.Stdout, clusterUsage)
			return nil
		}
		return fmt.Errorf("mynet cluster needs a subcommand, hosts or networks\n\n%s", clusterUsage)
	}
	sub := args[0]
	if sub != "hosts" && sub != "networks" {
		return fmt.Errorf("mynet cluster %s: unknown subcommand; use hosts or networks", sub)
	}
	cf, pos, done, err := ParseCommand("cluster "+sub, clusterUsage, false, args[1:])
	if done || err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("cluster %s takes no arguments, got %q", sub, pos)
	}
	ctx := context.Background()
	t, err := cf.Resolve(ctx, env)
	if err != nil {
		return err
	}
	r, err := FetchCluster(ctx, t.Socket)
	if err != nil {
		return err
	}
	switch {
	case sub == "hosts" && cf.Format == "json":
		return WriteJSON(env.Stdout, r.Hosts)
	case sub == "hosts":
		return writeHosts(env.Stdout, r, time.Now())
	case cf.Format == "json":
		return WriteJSON(env.Stdout, r.Networks)
	default:
		return writeClusterNetworks(env.Stdout, r)
	}
}

// FetchCluster asks the daemon at socket for its view of the cluster.
func FetchCluster(ctx context.Context, socket string) (*peers.Report, error) {
	var r peers.Report
	if err := call(ctx, socket, "Mynet.Cluster", "the cluster status", &r); err != nil {
		if strings.Contains(err.Error(), "does not serve /Mynet.Cluster") {
			return nil, fmt.Errorf("%w (a daemon not in cluster mode: start it with --cluster-store)", err)
		}
		return nil, err
	}
	return &r, nil
}

func writeHosts(w io.Writer, r *peers.Report, now time.Time) error {
	if r.Degraded {
		fmt.Fprintf(w, "Host %s is cut off from the cluster store (degraded): the list below is from %s.\n\n", r.HostID, r.HostsListed.Format(time.RFC3339))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tVTEP\tALIVE\tDEAD SINCE")
	for _, h := range r.Hosts {
		id, alive, dead := h.ID, "yes", "-"
		if id == r.HostID {
			id += " (this host)"
		}
		if !h.Alive {
			alive = "no"
			if !h.DeadSince.IsZero() {
				dead = fmt.Sprintf("%s (%s ago)", h.DeadSince.Format(time.RFC3339), now.Sub(h.DeadSince).Round(time.Second))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", id, h.VTEP, alive, dead)
	}
	return tw.Flush()
}

func writeClusterNetworks(w io.Writer, r *peers.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NETWORK\tSUBNET\tVNI\tDEVICE\tMEMBERS\tPEERS\tFDB\tSTATE")
	for _, n := range r.Networks {
		subnet, members := "?", "?"
		if n.Subnet.IsValid() {
			subnet = n.Subnet.String()
		}
		if n.StoreError == "" {
			members = strings.Join(n.Members, ",")
		}
		st := "ok"
		switch {
		case r.Degraded:
			st = "degraded"
		case n.LastError != "":
			st = "error: " + n.LastError
		case !n.Listed:
			st = "from local copy"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", n.Name, subnet, n.VNI, n.Device, members, len(n.Peers), n.FDBEntries, st)
	}
	return tw.Flush()
}
