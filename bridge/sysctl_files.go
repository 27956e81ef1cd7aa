package bridge

// The sysctls the periodic fingerprint reads, kept open.

import (
	"maps"

	"golang.org/x/sys/unix"
)

// sysctlFiles keeps /proc/sys files open between fingerprints: a pread
// costs a fraction of an open's walk through /proc/sys (300 files at 100
// networks: about 2 ms a pass with open, read and close). A file of a
// deleted link fails every read with ENOENT, also once a link of the same
// name exists again, so a failed read opens the file again. Past maxOpen
// files the rest are opened for each read, so that a host with thousands
// of networks does not spend its descriptors on this.
type sysctlFiles struct {
	fds  map[string]int // by key, as readSysctl takes it
	used map[string]bool
}

const maxOpenSysctls = 768

// value is the sysctl's value, or "-" when it cannot be read (IPv6
// disabled, a link gone), as sysctlValue gives it.
func (s *sysctlFiles) value(key string) string {
	if s.used == nil {
		s.fds, s.used = map[string]int{}, map[string]bool{}
	}
	s.used[key] = true
	fd, ok := s.fds[key]
	if ok {
		if v, ok := preadSysctl(fd); ok {
			return v
		}
		unix.Close(fd)
		delete(s.fds, key)
	}
	if len(s.fds) >= maxOpenSysctls {
		return sysctlValue(key)
	}
	fd, err := unix.Open("/proc/sys/"+key, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "-"
	}
	v, ok := preadSysctl(fd)
	if !ok {
		unix.Close(fd)
		return "-"
	}
	s.fds[key] = fd
	return v
}

func preadSysctl(fd int) (string, bool) {
	var buf [128]byte
	n, err := unix.Pread(fd, buf[:], 0)
	if err != nil || n == 0 || n == len(buf) {
		return "", false
	}
	return string(buf[:n-1]), true
}

// sweep closes the files no value call asked for since the last sweep:
// those of networks that are gone.
func (s *sysctlFiles) sweep() {
	for key, fd := range s.fds {
		if !s.used[key] {
			unix.Close(fd)
			delete(s.fds, key)
		}
	}
	clear(s.used)
}

func (s *sysctlFiles) close() {
	for fd := range maps.Values(s.fds) {
		unix.Close(fd)
	}
	s.fds, s.used = nil, nil
}
