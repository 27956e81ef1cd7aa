// Command udpecho answers every UDP datagram it receives with "NAME: " and
// the datagram, from the socket it arrived on, so that the reply retraces
// the request's NAT. The e2e suite builds it statically into the test image,
// because busybox nc has no UDP mode.
//
//	udpecho NAME PORT
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: udpecho NAME PORT")
		os.Exit(2)
	}
	port, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintf(os.Stderr, "udpecho: port %q: %v\n", os.Args[2], err)
		os.Exit(2)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		fmt.Fprintf(os.Stderr, "udpecho: %v\n", err)
		os.Exit(1)
	}
	prefix := os.Args[1] + ": "
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "udpecho: %v\n", err)
			os.Exit(1)
		}
		reply := append([]byte(prefix), buf[:n]...)
		if _, err := conn.WriteToUDPAddrPort(reply, from); err != nil {
			fmt.Fprintf(os.Stderr, "udpecho: reply to %v: %v\n", from, err)
		}
	}
}
