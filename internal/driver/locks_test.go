package driver

import (
	"testing"
	"time"
)

func TestKeyedLocks(t *testing.T) {
	var k keyedLocks
	unlockA := k.lock("a")
	unlockB := k.lock("b") // another key does not wait
	got := make(chan struct{})
	go func() {
		defer k.lock("a")()
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second holder got key a")
	case <-time.After(20 * time.Millisecond):
	}
	unlockA()
	<-got
	unlockB()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) != 0 {
		t.Fatalf("%d locks left after every holder left", len(k.m))
	}
}

func TestKeyedTryLock(t *testing.T) {
	var k keyedLocks
	unlockA, ok := k.tryLock("a")
	if !ok {
		t.Fatal("tryLock of a free key failed")
	}
	if _, ok := k.tryLock("a"); ok {
		t.Fatal("tryLock got a held key")
	}
	unlockB, ok := k.tryLock("b")
	if !ok {
		t.Fatal("tryLock of another key failed")
	}
	unlockA()
	unlockA2, ok := k.tryLock("a")
	if !ok {
		t.Fatal("tryLock of a released key failed")
	}
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { // lock and tryLock share the keys
		defer close(done) // after the unlock
		defer k.lock("b")()
		close(held)
		<-release
	}()
	unlockB()
	<-held
	if _, ok := k.tryLock("b"); ok {
		t.Fatal("tryLock got a key lock holds")
	}
	close(release)
	unlockA2()
	<-done
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) != 0 {
		t.Fatalf("%d locks left after every holder left", len(k.m))
	}
}
