package bridge

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mynet/mynet/internal/model"
	"golang.org/x/sys/unix"
)

// announce broadcasts a gratuitous ARP on the bridge for a new endpoint's
// IPv4 address: neighbours that still map the address to its previous
// owner's MAC (a container that had it a moment ago) update their entry
// rather than sending to the old MAC until it expires. Linux updates an
// existing entry on an unsolicited ARP whatever arp_accept says, and
// creates none, so hosts that never talked to the address are not touched.
// The frame leaves from the bridge device itself, so it floods to every
// port and passes no port's anti-spoofing filter.
// Equivalent to: arping -U -c 1 -I BRIDGE -s ADDR ADDR, with the
// endpoint's MAC as the source.
//
// fd is a packet socket that lives as long as the Dataplane: closing one
// waits for an RCU grace period (packet_release calls synchronize_net),
// which cost 15 ms per container start on the benchmark VM.
func announce(fd, ifindex int, bridge string, mac net.HardwareAddr, addr netip.Addr) error {
	if !addr.Is4() || len(mac) != 6 {
		return nil
	}
	ip := addr.As4()
	frame := make([]byte, 0, 42)
	frame = append(frame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff) // broadcast
	frame = append(frame, mac...)
	frame = binary.BigEndian.AppendUint16(frame, unix.ETH_P_ARP)
	frame = append(frame, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, request
	frame = append(frame, mac...)
	frame = append(frame, ip[:]...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, ip[:]...)
	to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Protocol: bigEndian16(unix.ETH_P_ARP)}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := unix.Sendto(fd, frame, 0, to); err != nil {
		return fmt.Errorf("send gratuitous ARP for %s on %s: %w", addr, bridge, err)
	}
	return nil
}

// openAnnounceSocket opens the socket announce sends on, in the calling
// thread's network namespace. Protocol 0 receives nothing, so the socket
// never queues frames.
func openAnnounceSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open packet socket for gratuitous ARP: %w", err)
	}
	return fd, nil
}

// bigEndian16 puts a protocol number in network order, as sockaddr_ll wants.
func bigEndian16(v uint16) uint16 { return v<<8 | v>>8 }

// announceAddresses tells the bridge's neighbours a new endpoint's MAC for
// its IPv4 addresses (see announce), from the packet socket opened with the
// Dataplane. Best effort, like a real NIC's announcement.
func (d *Dataplane) announceAddresses(ep model.Endpoint, bridgeIndex int) {
	if d.packetFD < 0 {
		return
	}
	for _, a := range ep.Addresses {
		if err := announce(d.packetFD, bridgeIndex, ep.Bridge, ep.MAC, a); err != nil {
			d.log.Debug("gratuitous ARP failed", "address", a, "err", err)
		}
	}
}
