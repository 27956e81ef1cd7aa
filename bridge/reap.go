package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Deleting a netdev is the slowest thing mynet asks of the kernel: the
// unregistration waits for RCU grace periods while holding the RTNL lock,
// about 30 ms per veth on the benchmark VM, and every other link change on
// the host (the next container's veth included) waits behind it. One
// request can delete many links at once, though: RTM_DELLINK with only
// IFLA_GROUP deletes every link of that group in a single
// unregister_netdevice_many, which pays the grace periods once. So the
// janitor moves the host veths of deleted endpoints into a group of this
// instance's (after checking the tag, as for a single delete) and deletes
// the group: one veth at a time when the host is quiet, and all that were
// queued meanwhile when containers stop in bulk, since each DeleteEndpoint
// queues its veth and then a reap job, and the first of those jobs to run
// takes the whole queue.
//
// The group number is derived from the instance name ("mn" in the top 16
// bits), so two instances never delete each other's veths; only links
// mynet has tagged as its own are ever put in it.

type reaper struct {
	group uint32
	conn  *mnl.Conn // NETLINK_ROUTE in the Dataplane's namespace; nil: delete one by one
	queue batch[reapItem]
}

type reapItem struct{ name, tag string }

func newReaper(instance string) *reaper {
	h := fnv.New32a()
	h.Write([]byte(instance))
	r := &reaper{group: 0x6d6e0000 | h.Sum32()&0xffff}
	// Opened in the caller's namespace, like the janitor's handle.
	if c, err := mnl.Dial(unix.NETLINK_ROUTE, nil); err == nil {
		r.conn = c
	}
	return r
}

func (r *reaper) close() {
	if r.conn != nil {
		r.conn.Close()
	}
}

// add queues a veth for deletion if it still carries tag.
func (r *reaper) add(name, tag string) { r.queue.add(reapItem{name, tag}) }

// batch is work queued by requests for the janitor, which takes it all at
// once: many containers stopping together cost one kernel operation.
type batch[T any] struct {
	mu    sync.Mutex
	items []T
}

func (b *batch[T]) add(items ...T) {
	b.mu.Lock()
	b.items = append(b.items, items...)
	b.mu.Unlock()
}

// take empties the batch and returns what it held.
func (b *batch[T]) take() []T {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.items
	b.items = nil
	return items
}

// reap deletes the queued veths with h, in one batch when it can.
func (d *Dataplane) reap(h *netlink.Handle) {
	r := d.reaper
	items := r.queue.take()
	grouped := 0
	for _, it := range items {
		l, err := h.LinkByName(it.name)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			d.log.Warn("could not delete veth", "veth", it.name, "err", err)
			continue
		}
		if l.Attrs().Alias != it.tag {
			d.log.Warn("not deleting link that mynet does not own", "link", it.name, "alias", l.Attrs().Alias)
			continue
		}
		if r.conn != nil {
			if err := h.LinkSetGroup(l, int(r.group)); err == nil {
				grouped++
				continue
			}
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			d.log.Warn("could not delete veth", "veth", it.name, "err", err)
		}
	}
	if grouped == 0 {
		return
	}
	if err := r.deleteGroup(); err != nil {
		// Leave nothing in the group: delete them one by one.
		d.log.Warn("could not delete veths as a group; deleting them one by one", "group", r.group, "err", err)
		links, lerr := h.LinkList()
		if lerr != nil {
			return
		}
		for _, l := range links {
			if uint32(l.Attrs().Group) == r.group {
				if err := h.LinkDel(l); err != nil && !isNotFound(err) {
					d.log.Warn("could not delete veth", "veth", l.Attrs().Name, "err", err)
				}
			}
		}
		return
	}
	d.log.Debug("veths deleted", "count", grouped)
}

// deleteGroup is: ip link delete group GROUP.
func (r *reaper) deleteGroup() error {
	ifinfomsg := make([]byte, unix.SizeofIfInfomsg) // all zero: no index
	attrs, err := mnl.MarshalAttributes([]mnl.Attribute{{Type: unix.IFLA_GROUP, Data: binary.NativeEndian.AppendUint32(nil, r.group)}})
	if err != nil {
		return err
	}
	_, err = r.conn.Execute(mnl.Message{
		Header: mnl.Header{Type: unix.RTM_DELLINK, Flags: mnl.Request | mnl.Acknowledge},
		Data:   append(ifinfomsg, attrs...),
	})
	if errors.Is(err, unix.ENODEV) { // the links went meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete link group %d: %w", r.group, err)
	}
	return nil
}
