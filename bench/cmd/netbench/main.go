// Command netbench measures the data plane between two containers: bulk TCP
// throughput and request/response latency over one connection. mynet-bench
// builds it statically (CGO_ENABLED=0) and imports it alone into an image,
// because no registry is reachable and busybox has no such tool.
//
//	netbench server [-port 5201]
//	netbench client -addr HOST:PORT -mode stream|rr [-duration 5s] [-size N]
//
// The client prints one JSON object (see result) on stdout.
//
// Protocol: the client sends one mode byte ('S' or 'R') on a new
// connection. In stream mode it then writes -size byte chunks for the
// duration and half-closes; the server counts what it read and answers with
// the count (8 bytes, big endian) once it sees EOF, so the rate is what
// reached the server. In rr mode client and server bounce a -size byte
// message; every round trip after a warm-up is timed.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netbench server [-port N] | netbench client -addr HOST:PORT -mode stream|rr [-duration D] [-size N]")
	os.Exit(2)
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	port := fs.Int("port", 5201, "TCP port to listen on")
	fs.Parse(args)
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "netbench: listening on %s\n", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := serveConn(c); err != nil {
				fmt.Fprintf(os.Stderr, "netbench: %s: %v\n", c.RemoteAddr(), err)
			}
		}()
	}
}

func serveConn(c net.Conn) error {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return err
	}
	switch mode[0] {
	case 'S':
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		if err != nil {
			return err
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		_, err = c.Write(out[:])
		return err
	case 'R':
		var size [4]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			return err
		}
		buf := make([]byte, binary.BigEndian.Uint32(size[:]))
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("unknown mode %q", mode[0])
}

// result is the client's report.
type result struct {
	Mode       string  `json:"mode"`
	Seconds    float64 `json:"seconds"`
	Bytes      uint64  `json:"bytes,omitempty"`
	Gbps       float64 `json:"gbps,omitempty"`
	RoundTrips int     `json:"round_trips,omitempty"`
	MeanUs     float64 `json:"mean_us,omitempty"`
	P50Us      float64 `json:"p50_us,omitempty"`
	P99Us      float64 `json:"p99_us,omitempty"`
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	mode := fs.String("mode", "stream", "stream (bulk TCP) or rr (request/response)")
	dur := fs.Duration("duration", 5*time.Second, "how long to measure")
	size := fs.Int("size", 0, "write size in stream mode (default 128 KiB), message size in rr mode (default 1)")
	fs.Parse(args)
	if *addr == "" {
		return errors.New("client: -addr is required")
	}
	var c net.Conn
	var err error
	// The server container may still be starting: retry for a few seconds.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if c, err = net.DialTimeout("tcp", *addr, 2*time.Second); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	defer c.Close()
	var res result
	switch *mode {
	case "stream":
		res, err = stream(c.(*net.TCPConn), *dur, cmpOr(*size, 128<<10))
	case "rr":
		res, err = rr(c, *dur, cmpOr(*size, 1))
	default:
		return fmt.Errorf("client: unknown -mode %q", *mode)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func cmpOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func stream(c *net.TCPConn, dur time.Duration, size int) (result, error) {
	buf := make([]byte, size)
	if _, err := c.Write([]byte{'S'}); err != nil {
		return result{}, err
	}
	start := time.Now()
	end := start.Add(dur)
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return result{}, err
		}
	}
	if err := c.CloseWrite(); err != nil {
		return result{}, err
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return result{}, fmt.Errorf("reading the server's byte count: %w", err)
	}
	secs := time.Since(start).Seconds()
	n := binary.BigEndian.Uint64(ack[:])
	return result{Mode: "stream", Seconds: secs, Bytes: n, Gbps: float64(n) * 8 / secs / 1e9}, nil
}

func rr(c net.Conn, dur time.Duration, size int) (result, error) {
	hdr := []byte{'R', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], uint32(size))
	if _, err := c.Write(hdr); err != nil {
		return result{}, err
	}
	msg, in := make([]byte, size), make([]byte, size)
	r := bufio.NewReaderSize(c, max(size, 4096))
	once := func() error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(r, in)
		return err
	}
	for range 200 { // warm-up: ARP, slow start, caches
		if err := once(); err != nil {
			return result{}, err
		}
	}
	var lat []time.Duration
	start := time.Now()
	end := start.Add(dur)
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			break
		}
		if err := once(); err != nil {
			return result{}, err
		}
		lat = append(lat, time.Since(t0))
	}
	secs := time.Since(start).Seconds()
	slices.Sort(lat)
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return result{
		Mode: "rr", Seconds: secs, RoundTrips: len(lat),
		MeanUs: us(sum) / float64(len(lat)),
		P50Us:  us(lat[len(lat)/2]),
		P99Us:  us(lat[min(len(lat)-1, len(lat)*99/100)]),
	}, nil
}
