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
