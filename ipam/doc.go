// Package ipam is mynet's address allocator: pure data structures over
// net/netip, with no I/O, no locking and no knowledge of Docker.
//
// A Pool hands out addresses of one subnet, optionally restricted to a
// sub-range (docker network create --ip-range), round-robin from the last
// address it handed out, so that an address released by a crash-looping
// container is not handed out again at once. IPv4 and IPv6 share the code;
// the subnet's network address (and the IPv4 broadcast address) are never
// handed out.
//
// Persistence and concurrency are the caller's: the plugin serialises calls
// and writes every change to the state store in the same operation.
package ipam
