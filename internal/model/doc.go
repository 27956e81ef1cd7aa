// Package model is what every layer of mynet shares: the network, endpoint
// and port types the dataplane builds from, the names derived from IDs
// (bridges, veths, chains, the nftables table), and the formats by which
// mynet recognises its own kernel objects (link tags, rule comments, the
// instance hash). Each is defined here once; the daemon and `mynet doctor`
// read the kernel through the same definitions. It imports nothing of
// mynet's own.
package model
