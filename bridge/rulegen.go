package bridge

// The nftables ruleset generation of the Dataplane's namespace, which
// lets the firewall and the fingerprint keep what they read while
// nothing was committed, and the record of the commits that were
// mynet's own.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rulesetGen reads the generation of the namespace's nftables ruleset.
// Every committed nftables transaction in the namespace increments it,
// whoever commits it and whatever table it touches: dockerd's rules,
// `nft` by hand, and iptables-nft, whose tables live in nf_tables too.
// (iptables-legacy changes no generation: its readers cannot use one.)
//
// It also keeps the last steps of the generation that mynet's own writes
// account for exactly (a write that moved it from before to after, by as
// many commits as it made): a cache of one table stays valid across
// another table's write of mynet's, so that an anti-spoofing change or an
// IPv6 write does not make the next IPv4 operation read 3,000 rules.
type rulesetGen struct {
	conn *netlink.Conn // nil: nftables unavailable, no generation

	mu    sync.Mutex
	steps []genStep // the latest last, at most maxGenSteps
}

// genStep is a write of mynet's that moved the generation from before to
// after with nothing else committed in between.
type genStep struct {
	before, after uint32
	who           string // the writer, whose own cache the step does not vouch for
}

const maxGenSteps = 128

// newRulesetGen opens a netfilter socket in the calling thread's network
// namespace; without one (no nftables in the kernel) it has no generation.
func newRulesetGen() *rulesetGen {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return &rulesetGen{}
	}
	return &rulesetGen{conn: c}
}

func (g *rulesetGen) close() {
	if g != nil && g.conn != nil {
		g.conn.Close()
	}
}

// current is the generation now; ok is false when it cannot be read, and
// then nothing may be reused.
func (g *rulesetGen) current() (gen uint32, ok bool) {
	if g == nil || g.conn == nil {
		return 0, false
	}
	gen, err := readGenID(g.conn)
	return gen, err == nil
}

// readGenID asks for the generation with NFT_MSG_GETGEN (`nft list
// ruleset` shows none; the kernel keeps it per network namespace).
func readGenID(c *netlink.Conn) (uint32, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return 0, err
		}
		for _, a := range attrs {
			if a.Type == unix.NFTA_GEN_ID && len(a.Data) == 4 {
				return binary.BigEndian.Uint32(a.Data), nil
			}
		}
	}
	return 0, errors.New("ruleset generation: no NFTA_GEN_ID in the answer")
}

// wrote records that who's write alone moved the generation from before
// to after.
func (g *rulesetGen) wrote(before, after uint32, who string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.steps) == maxGenSteps {
		g.steps = slices.Delete(g.steps, 0, 1)
	}
	g.steps = append(g.steps, genStep{before, after, who})
}

// onlyOthers reports whether every commit between generations from and to
// was a recorded write of a writer other than who: then what who read at
// from is still what the kernel has.
func (g *rulesetGen) onlyOthers(from, to uint32, who string) bool {
	if from == to {
		return true
	}
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for range len(g.steps) {
		i := slices.IndexFunc(g.steps, func(s genStep) bool { return s.before == from })
		if i < 0 || g.steps[i].who == who {
			return false
		}
		if from = g.steps[i].after; from == to {
			return true
		}
	}
	return false
}
