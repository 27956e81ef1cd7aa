// Command mynet is a Docker network and IPAM plugin: one daemon serving the
// NetworkDriver and IpamDriver plugin APIs on one unix socket, building a
// Linux bridge per network and a veth pair per container.
//
//	mynet serve [flags]   run the daemon in the foreground
//	mynet ls              list the daemon's networks
//	mynet inspect NETWORK show a network's endpoints
//	mynet doctor          check the host and the daemon's objects
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/internal/doctor"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "ls":
		err = cli.RunLs(os.Args[2:], cli.DefaultEnv())
	case "inspect":
		err = cli.RunInspect(os.Args[2:], cli.DefaultEnv())
	case "cluster":
		err = cli.RunCluster(os.Args[2:], cli.DefaultEnv())
	case "doctor":
		err = doctor.Run(os.Args[2:], cli.DefaultEnv())
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "mynet: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mynet:", err)
		var se stateError
		if errors.As(err, &se) {
			// EX_CONFIG: restarting cannot help, so the systemd unit does
			// not restart on it (RestartPreventExitStatus=78).
			os.Exit(78)
		}
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: mynet <command> [flags]

commands:
  serve    run the plugin daemon in the foreground (mynet serve -h for flags)
  ls       list the daemon's networks
  inspect  show a network's endpoints: addresses, MACs, veths, published ports
  doctor   check the host and the daemon's objects; print each problem's fix
  cluster  hosts|networks: the cluster as this daemon sees it (cluster mode)

ls, inspect, cluster and doctor reach the daemon of serve's default flags; --name,
--socket or --plugin NAME:TAG reach another. --format json for scripts.
`)
}
