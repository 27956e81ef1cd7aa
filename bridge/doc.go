// Package bridge is mynet's dataplane: Linux bridges, veth pairs, addresses,
// sysctls and iptables rules, each made through an idempotent ensure/remove
// pair.
//
// Invariants:
//   - bridge never reads the state file and never speaks HTTP; callers pass
//     complete Network and Endpoint values.
//   - Every object it makes is tagged so it can find exactly what it owns:
//     links carry the alias "mynet:<instance>:net:<id>" or
//     "mynet:<instance>:ep:<id>", iptables rules live in chains named after
//     the instance and carry the comment "mynet net=<network id>".
//   - It deletes only what it owns: a link or rule without mynet's tag is
//     never removed, and a name that is taken by a foreign interface is a
//     conflict, not something to adopt.
//   - Every Ensure is safe to repeat and every Delete succeeds when the object
//     is already gone, so the same calls serve creation, crash recovery and
//     repair.
package bridge
