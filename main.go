// Command mynet is a Docker network and IPAM plugin: one daemon serving the
// NetworkDriver and IpamDriver plugin APIs on one unix socket, building a
// Linux bridge per network and a veth pair per container.
//
//	mynet serve [flags]   run the daemon in the foreground
package main

import (
	"errors"
	"fmt"
	"os"
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
`)
}
