package model

import (
	"errors"
	"fmt"
	"strings"
)

// IFNAMSIZ is the kernel's interface-name buffer, including the trailing NUL.
const IFNAMSIZ = 16

// ErrInvalidID is returned for network and endpoint IDs that are not 64
// lowercase hex characters, the only form the engine sends.
var ErrInvalidID = errors.New("invalid ID")

// ValidateID checks that id is a Docker object ID (64 lowercase hex digits).
// IDs become parts of interface names, rule comments and database keys, so
// anything else is refused before it reaches any of them.
func ValidateID(kind, id string) error {
	if len(id) != 64 {
		return fmt.Errorf("%w: %s %q must be 64 hex characters, got %d", ErrInvalidID, kind, Short(id), len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: %s %q contains %q; only lowercase hex is allowed", ErrInvalidID, kind, Short(id), c)
		}
	}
	return nil
}

// Short returns the 12-character prefix Docker shows for IDs, for use in
// names and messages. Shorter strings are returned whole.
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// ValidateIfName applies the kernel's dev_valid_name rules plus the rules
// that make a name safe as an iptables -i/-o argument: a trailing '+' is a
// wildcard there, and a leading '-' or '!' would be read as an option or a
// negation. A '%' is refused too: the kernel reads "br%d" as a template and
// names the link br0, br1..., so the link would not have the name asked for.
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) >= IFNAMSIZ:
		return fmt.Errorf("interface name %q is %d bytes; the kernel allows at most %d", name, len(name), IFNAMSIZ-1)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is reserved", name)
	case strings.HasSuffix(name, "+"):
		return fmt.Errorf("interface name %q ends in '+', which iptables reads as a wildcard", name)
	case strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!"):
		return fmt.Errorf("interface name %q starts with %q, which iptables reads as an option or negation", name, name[:1])
	}
	for _, r := range name {
		if r == '%' {
			return fmt.Errorf("interface name %q contains '%%', which the kernel replaces with a number; use letters, digits, '-', '_' or '.'", name)
		}
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f || r > 0x7e {
			return fmt.Errorf("interface name %q contains %q; use letters, digits, '-', '_' or '.'", name, r)
		}
	}
	return nil
}

// ValidateTrustedInterface checks one name of trusted_host_interfaces:
// an interface name (ValidateIfName), or a prefix of one ending in '+',
// which iptables matches as a wildcard (eth+: every eth interface); Docker's
// bridge hands the names to iptables as they are. '+' alone, which would
// trust every interface, is refused.
func ValidateTrustedInterface(name string) error {
	prefix, wildcard := strings.CutSuffix(name, "+")
	if wildcard && prefix == "" {
		return errors.New("'+' alone would match every interface; name the interfaces, or use gateway mode nat-unprotected")
	}
	if err := ValidateIfName(prefix); err != nil {
		return err
	}
	if wildcard && len(name) >= IFNAMSIZ {
		return fmt.Errorf("interface name %q is %d bytes; the kernel allows at most %d", name, len(name), IFNAMSIZ-1)
	}
	return nil
}

// MaxIfacePrefix is the longest container interface prefix accepted: the
// engine appends the interface's index to it, and prefix and a number up
// to 999 must fit the kernel's IFNAMSIZ-1 bytes.
const MaxIfacePrefix = IFNAMSIZ - 1 - 3

// ValidateIfacePrefix checks a container interface-name prefix
// (com.docker.network.container_iface_prefix). Letters and digits only:
// the engine names the interface prefix+N inside the container, where a
// '.', '-' or '%' would make a name tools read differently, and the
// prefix must start with a letter so that prefix+N is never a number.
func ValidateIfacePrefix(p string) error {
	switch {
	case p == "":
		return errors.New("interface prefix is empty")
	case len(p) > MaxIfacePrefix:
		return fmt.Errorf("interface prefix %q is %d bytes; at most %d, so that the prefix and the number the engine appends (up to 3 digits) fit the kernel's %d-byte interface names", p, len(p), MaxIfacePrefix, IFNAMSIZ-1)
	}
	for i, r := range p {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || r < '0' || r > '9') {
			return fmt.Errorf("interface prefix %q contains %q at byte %d; use letters and digits, starting with a letter", p, r, i)
		}
	}
	return nil
}
