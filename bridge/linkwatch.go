package bridge

// A subscription to the namespace's link and address events, so that the
// periodic fingerprint dumps 2,000 links and their addresses only when
// something happened to one.

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// linkWatch is subscribed to RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and
// RTNLGRP_IPV6_IFADDR in the Dataplane's namespace (`ip monitor link
// address`). Any event marks the links dirty: being conservative costs a
// dump, missing one would hide damage. So does anything that may have
// lost events: an overflow of the socket's queue (ENOBUFS), a receive
// error or a subscription that could not be made; the next clean() then
// subscribes again.
type linkWatch struct {
	ns  netns.NsHandle // the namespace to (re)subscribe in
	log *slog.Logger

	mu   sync.Mutex // serialises clean, subscribe and close
	conn *netlink.Conn
	pid  uint32        // conn's port ID: the barrier's replies carry it
	done chan struct{} // closed when the receiver of conn has returned

	dirty  atomic.Bool
	acked  atomic.Uint32 // the last barrier sequence the receiver saw
	ackCh  chan struct{} // signalled on each barrier reply
	closed bool
}

// barrierTimeout bounds the wait for the barrier's reply; past it the
// links count as dirty and the subscription is made again.
const barrierTimeout = 2 * time.Second

// newLinkWatch subscribes in the calling thread's network namespace.
func newLinkWatch(log *slog.Logger) *linkWatch {
	w := &linkWatch{ns: netns.None(), log: log, ackCh: make(chan struct{}, 1)}
	w.dirty.Store(true)
	ns, err := netns.Get()
	if err != nil {
		log.Warn("cannot watch links: every reconcile pass lists them", "err", err)
		return w
	}
	w.ns = ns
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subscribe()
	return w
}

// subscribe opens the socket; on failure the watch stays unsubscribed
// (dirty) and the next clean() tries again. The caller holds mu.
func (w *linkWatch) subscribe() {
	groups := uint32(1<<(unix.RTNLGRP_LINK-1) | 1<<(unix.RTNLGRP_IPV4_IFADDR-1) | 1<<(unix.RTNLGRP_IPV6_IFADDR-1))
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{Groups: groups, NetNS: int(w.ns)})
	if err != nil {
		w.log.Debug("subscribe to link events", "err", err)
		return
	}
	// Room for a burst (a thousand containers stopping); an overflow only
	// costs a dump.
	_ = c.SetReadBuffer(4 << 20)
	// Learn the port ID: a request's header carries it once sent.
	m, err := c.Send(barrierRequest())
	if err != nil {
		c.Close()
		return
	}
	w.conn, w.pid, w.done = c, m.Header.PID, make(chan struct{})
	w.dirty.Store(true)
	go w.receive(c, w.done)
}

// barrierRequest asks for lo, which every namespace has as index 1: its
// answer comes after every event queued before the request.
func barrierRequest() netlink.Message {
	ifi := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(ifi[4:], 1) // ifi_index
	return netlink.Message{Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request}, Data: ifi}
}

// receive marks the links dirty on every event until the socket fails or
// is closed.
func (w *linkWatch) receive(c *netlink.Conn, done chan struct{}) {
	defer close(done)
	for {
		msgs, err := c.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			w.dirty.Store(true) // events were lost; the socket still works
			continue
		}
		if err != nil {
			w.dirty.Store(true)
			return
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_NEWLINK && m.Header.PID == w.pid && m.Header.Sequence != 0 && m.Header.Flags&netlink.Multi == 0 && isBarrierReply(m) {
				w.acked.Store(m.Header.Sequence)
				select {
				case w.ackCh <- struct{}{}:
				default:
				}
				continue
			}
			w.dirty.Store(true)
		}
	}
}

// isBarrierReply: the answer about lo (index 1). Events about lo carry
// the PID of whoever changed it, never this socket's.
func isBarrierReply(m netlink.Message) bool {
	return len(m.Data) >= unix.SizeofIfInfomsg && binary.NativeEndian.Uint32(m.Data[4:8]) == 1
}

// clean reports whether no link or address changed since the last call
// that returned false or true, that is: every event up to now has been
// received (a barrier request answered after them), and none came. It
// resets the mark: the caller lists the links when it returns false.
func (w *linkWatch) clean() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if w.conn != nil && !w.barrier() {
		w.conn.Close()
		<-w.done
		w.conn = nil
	}
	if w.conn == nil {
		w.subscribe()
		w.dirty.Store(false)
		return false
	}
	return !w.dirty.Swap(false)
}

// barrier sends the request and waits for its answer, which the kernel
// queues behind every event already queued. The caller holds mu.
func (w *linkWatch) barrier() bool {
	m, err := w.conn.Send(barrierRequest())
	if err != nil {
		return false
	}
	deadline := time.NewTimer(barrierTimeout)
	defer deadline.Stop()
	for w.acked.Load() != m.Header.Sequence {
		select {
		case <-w.ackCh:
		case <-w.done:
			return false
		case <-deadline.C:
			w.log.Warn("link events: no answer to the barrier request, subscribing again", "after", barrierTimeout)
			return false
		}
	}
	return true
}

// close ends the subscription and waits for its receiver; again, it does
// nothing.
func (w *linkWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	if w.conn != nil {
		w.conn.Close()
		<-w.done
		w.conn = nil
	}
	if w.ns != netns.None() {
		w.ns.Close()
	}
}
