package ipam

import (
	"net/netip"
	"sync"
)

// Book is a Pool with the bookkeeping of who holds each address: the MAC
// of the endpoint an address was allocated for, so that a retried
// RequestAddress gets the same answer, and the addresses whose allocation
// or release is being written to the store.
//
// A Book is guarded by a mutex its caller holds (one for all pools, so
// that an address request never waits for another's store write): Wait
// and Write release it while they block, and take it again.
type Book struct {
	*Pool
	owners  map[netip.Addr]string
	byOwner map[string]netip.Addr
	// busy holds the addresses whose store write is in flight outside the
	// caller's mutex; the channel closes when the write is done. Another
	// request for the same address waits for it, so the store sees the
	// changes of one address in the order they were made.
	busy map[netip.Addr]chan struct{}
}

// NewBook returns the bookkeeping of p, with no owners.
func NewBook(p *Pool) *Book {
	return &Book{Pool: p, owners: map[netip.Addr]string{}, byOwner: map[string]netip.Addr{}, busy: map[netip.Addr]chan struct{}{}}
}

// SetOwner records that a was allocated for owner; an empty owner (the
// engine sent no MAC) records nothing.
func (b *Book) SetOwner(a netip.Addr, owner string) {
	if owner != "" {
		b.owners[a], b.byOwner[owner] = owner, a
	}
}

// Owned returns the address allocated for owner, if any.
func (b *Book) Owned(owner string) (netip.Addr, bool) {
	if owner == "" {
		return netip.Addr{}, false
	}
	a, ok := b.byOwner[owner]
	return a, ok
}

// OwnerOf returns the owner a was allocated for, or "".
func (b *Book) OwnerOf(a netip.Addr) string { return b.owners[a] }

// Release frees a and forgets its owner.
func (b *Book) Release(a netip.Addr) {
	b.Pool.Release(a)
	if owner, ok := b.owners[a]; ok {
		delete(b.byOwner, owner)
		delete(b.owners, a)
	}
}

// Wait waits, releasing mu meanwhile, until no store write of a is in
// flight; it reports whether it had to wait, after which the caller must
// look again at what it checked.
func (b *Book) Wait(mu sync.Locker, a netip.Addr) bool {
	done, ok := b.busy[a]
	if !ok {
		return false
	}
	mu.Unlock()
	<-done
	mu.Lock()
	return true
}

// Write runs a store write of a without mu, which the caller holds,
// marking a busy meanwhile (see Wait).
func (b *Book) Write(mu sync.Locker, a netip.Addr, write func() error) error {
	done := make(chan struct{})
	b.busy[a] = done
	mu.Unlock()
	err := write()
	mu.Lock()
	delete(b.busy, a)
	close(done)
	return err
}

// ReservedHost names the IPv4 network or broadcast address of a subnet,
// which no host may have, or returns ""; a /31 or /32 has neither (RFC
// 3021).
func ReservedHost(pool netip.Prefix, a netip.Addr) string {
	if !a.Is4() || pool.Bits() > 30 {
		return ""
	}
	if a == pool.Masked().Addr() {
		return "network"
	}
	if a == LastAddr(pool) {
		return "broadcast"
	}
	return ""
}

// LastAddr is the highest address of a prefix.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
