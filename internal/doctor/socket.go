package doctor

// The daemon's socket: that it exists with the right owner and mode, and
// that the daemon behind it answers.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/mynet/mynet/internal/cli"
	"github.com/mynet/mynet/plugin"
	"golang.org/x/sys/unix"
)

// checkSocket checks the socket's permissions and that the daemon answers,
// and returns its state (nil when it does not answer).
func (d *doctor) checkSocket(ctx context.Context) *plugin.Dump {
	sock := d.t.Socket
	start := d.t.Restart
	if d.t.Plugin != "" {
		start = "docker plugin enable " + d.t.Plugin
	}
	fi, err := os.Stat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.add("socket", statusProblem, "no socket at "+sock+": the daemon is not running, or was started with another --name", start)
		return nil
	case err != nil:
		d.add("socket", statusProblem, "cannot check "+sock+": "+err.Error(), "run mynet doctor as root")
		return nil
	case fi.Mode()&fs.ModeSocket == 0:
		d.add("socket", statusProblem, sock+" is not a socket ("+fi.Mode().String()+")", "rm "+sock+" && "+start)
		return nil
	}
	problems := d.report.Problems
	if perm := fi.Mode().Perm(); perm != 0o660 {
		d.add("socket", statusProblem, fmt.Sprintf("%s has mode %04o, want 0660: %s", sock, perm, modeRisk(perm)), "chmod 0660 "+sock)
	}
	owner, group := -1, -1
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner, group = int(sys.Uid), int(sys.Gid)
		if owner != 0 {
			d.add("socket", statusProblem, fmt.Sprintf("%s is owned by %s, want root: that user can drive the plugin", sock, userName(owner)), "chown root "+sock)
		}
	}
	pid, err := peerPID(sock)
	if err != nil {
		d.add("socket", statusProblem, cli.SocketError(sock, err).Error(), d.t.Restart)
		return nil
	}
	d.pid = pid
	st, err := d.stateFetch(ctx, sock)
	if err != nil {
		d.add("socket", statusProblem, err.Error(), d.t.Restart)
		return nil
	}
	if d.report.Problems == problems {
		d.add("socket", statusOK, fmt.Sprintf("%s answers (daemon pid %d); mode 0660, owner root, group %s", sock, pid, groupName(group)), "")
	}
	return st
}

func modeRisk(perm fs.FileMode) string {
	if perm&0o007 != 0 {
		return "any local user can create networks and change the host's firewall through it"
	}
	if perm&0o600 != 0o600 {
		return "root cannot use it; dockerd cannot reach the plugin"
	}
	return "mynet creates it 0660"
}

// peerPID connects to the socket and returns the listening process's ID.
func peerPID(sock string) (int, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username + " (" + strconv.Itoa(uid) + ")"
	}
	return "uid " + strconv.Itoa(uid)
}

func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}
