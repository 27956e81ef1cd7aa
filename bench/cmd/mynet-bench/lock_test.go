package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestLockFileWaitsForAnotherProcess(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock(1)")
	}
	path := filepath.Join(t.TempDir(), "docker.lock")
	holder := exec.Command("flock", path, "sleep", "0.8")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if held(t, path) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("flock(1) did not take the lock")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lockFile while another process holds the lock = %v, want a deadline error", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	start := time.Now()
	release, err := lockFile(ctx2, path)
	if err != nil {
		t.Fatal(err)
	}
	if !held(t, path) {
		t.Error("lock not held after lockFile returned")
	}
	release()
	if held(t, path) {
		t.Error("lock still held after release")
	}
	t.Logf("waited %v", time.Since(start))
}

func TestLockFileUsesInheritedLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docker.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	release, err := lockFile(ctx, path)
	if err != nil {
		t.Fatalf("lockFile under an inherited lock: %v", err)
	}
	release()
}

// held reports whether some process holds an exclusive lock on path, by
// trying to take it from a new open file description of a child process
// (a descriptor of this process would be found by inheritedFD).
func held(t *testing.T, path string) bool {
	t.Helper()
	err := exec.Command("flock", "-n", path, "true").Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	return false
}
