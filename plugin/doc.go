// Package plugin serves Docker's NetworkDriver and IpamDriver plugin
// protocol: it routes and decodes requests, checks their own form, parses
// Docker's options into typed configuration once, calls the domain
// (package internal/driver), and maps its errors to 400, 500 and 503. It
// holds no state of its own and never imports the dataplane.
package plugin
