package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// ErrUnusable marks a state file mynet must not serve from: a record that
// does not decode or validate, a missing schema version, a corrupted page.
// Serving from it would make the startup reconcile take the kernel objects
// of the records it could not read for orphans and delete them, cutting
// off running containers. The caller refuses to start (exit 78).
var ErrUnusable = errors.New("unusable state")

// Recovery is the pointer every unusable-state error ends with.
const Recovery = `see "Recovering the state" in the README`

// unusable wraps an error about the file at path as ErrUnusable.
func unusable(path, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s; %s", ErrUnusable, path, fmt.Sprintf(format, args...), Recovery)
}

// recoverPanic turns a bbolt panic into an ErrUnusable error. bbolt asserts
// on corrupted pages ("assertion failed: Page expected to be ...") with a
// panic rather than an error; without this, a damaged file ends in a stack
// trace and a restart loop instead of a message.
func recoverPanic(path string, err *error) {
	if r := recover(); r != nil {
		*err = unusable(path, "the file is corrupted (bbolt: %v)", r)
	}
}

// bbolt's meta page, as laid out in go.etcd.io/bbolt/internal/common: a
// 16-byte page header, then magic, version, page size, flags, the root
// bucket (two uint64), the freelist, the high-water mark and the txid, all
// in native (little-endian on every platform mynet supports) byte order,
// followed by an FNV-64a checksum of the bytes before it.
const (
	boltMagic     = 0xED0CDAED
	boltVersion   = 2
	metaOffset    = 16
	metaSumOffset = metaOffset + 56
	metaTxid      = metaOffset + 48
	metaPageSize  = metaOffset + 8
)

type metaPage struct {
	txid     uint64
	pageSize uint32
	err      error // why bbolt would reject it; nil when valid
}

func readMeta(buf []byte) metaPage {
	if len(buf) < metaSumOffset+8 {
		return metaPage{err: errors.New("short page")}
	}
	le := binary.LittleEndian
	m := metaPage{txid: le.Uint64(buf[metaTxid:]), pageSize: le.Uint32(buf[metaPageSize:])}
	h := fnv.New64a()
	h.Write(buf[metaOffset:metaSumOffset])
	switch {
	case le.Uint32(buf[metaOffset:]) != boltMagic:
		m.err = errors.New("bad magic")
	case le.Uint32(buf[metaOffset+4:]) != boltVersion:
		m.err = errors.New("unknown version")
	case h.Sum64() != le.Uint64(buf[metaSumOffset:]):
		m.err = errors.New("bad checksum")
	}
	return m
}

// checkMetaPages reads the file's two meta pages before bbolt opens it.
// bbolt keeps two and silently uses the other when the newer one is
// damaged, which rolls back the last committed transaction: the state then
// lacks a network or endpoint that exists in the kernel. The state is
// still consistent, so this is a warning, returned for the caller to log.
// Files bbolt would reject, or a new file, return "".
func checkMetaPages(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	page0 := make([]byte, 4096)
	if n, _ := io.ReadFull(f, page0); n < metaSumOffset+8 {
		return ""
	}
	m0 := readMeta(page0)
	size := int64(os.Getpagesize())
	if m0.err == nil {
		size = int64(m0.pageSize)
	}
	page1 := make([]byte, metaSumOffset+8)
	if _, err := f.ReadAt(page1, size); err != nil {
		return ""
	}
	m1 := readMeta(page1)
	switch {
	case m0.err == nil && m1.err == nil, m0.err != nil && m1.err != nil:
		return ""
	case m0.err != nil:
		return metaWarning(0, m0, m1)
	default:
		return metaWarning(1, m1, m0)
	}
}

func metaWarning(bad int, damaged, used metaPage) string {
	if damaged.txid+1 == used.txid {
		// Its transaction ID survived and is the older one: the newer
		// page is intact, and bbolt would use it anyway.
		return fmt.Sprintf("meta page %d of the state file is damaged (%v); it held the older of the two transactions (%d), so nothing is lost, "+
			"but the disk under the state may be failing", bad, damaged.err, damaged.txid)
	}
	return fmt.Sprintf("meta page %d of the state file is damaged (%v); bbolt falls back to meta page %d (transaction %d), "+
		"so the last change written before the damage may be lost: the state is consistent but may lack a network or endpoint "+
		"that exists in the kernel, whose links the reconcile then removes as orphans",
		bad, damaged.err, 1-bad, used.txid)
}
