package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	mnl "github.com/mdlayher/netlink"
	"github.com/mynet/mynet/internal/model"
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
// A queued veth is known by its index, not its name: an endpoint created
// again with the same ID before the janitor ran gets a new pair of the same
// name (and tag), which the janitor must not delete, and ensureVeth must not
// adopt the old one (it deletes it at once, see doomed).
//
// The group number is derived from the instance name ("mn" in the top 16
// bits), so two instances never delete each other's veths; only links
// mynet has tagged as its own are ever put in it.

type reaper struct {
	group uint32
	conn  *mnl.Conn // NETLINK_ROUTE in the Dataplane's namespace; nil: delete one by one
	queue batch[reapItem]
	// queued holds the indexes of the veths queued or being deleted.
	mu     sync.Mutex
	queued map[int]bool
}

type reapItem struct {
	index     int
	name, tag string // the name for messages only
}

func newReaper(instance string) *reaper {
	h := fnv.New32a()
	h.Write([]byte(instance))
	r := &reaper{group: 0x6d6e0000 | h.Sum32()&0xffff, queued: map[int]bool{}}
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

// add queues the veth with this index for deletion if it still carries
// tag.
func (r *reaper) add(it reapItem) {
	r.mu.Lock()
	r.queued[it.index] = true
	r.mu.Unlock()
	r.queue.add(it)
}

// doomed reports whether the link with this index waits for deletion.
func (r *reaper) doomed(index int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queued[index]
}

func (r *reaper) done(items []reapItem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, it := range items {
		delete(r.queued, it.index)
	}
}

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
	// Only once they are gone: until then ensureVeth must see them.
	defer r.done(items)
	grouped := 0
	for _, it := range items {
		l, err := h.LinkByIndex(it.index)
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

// queueVeth queues the endpoint's host veth for the janitor, if it exists
// and is the endpoint's.
func (d *Dataplane) queueVeth(ep model.Endpoint) error {
	tag := d.tag("ep", ep.ID)
	l, err := d.nl.LinkByName(ep.HostVeth)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	if l.Attrs().Alias != tag {
		d.log.Warn("not deleting link that mynet does not own", "link", ep.HostVeth, "alias", l.Attrs().Alias)
		return nil
	}
	d.reaper.add(reapItem{index: l.Attrs().Index, name: ep.HostVeth, tag: tag})
	d.later(d.reap)
	return nil
}
