package plugin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLimit: past the bound, a request waits for a slot and then gets a
// 503 with an error the engine can show, instead of hanging.
func TestLimit(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(1)
	h := Limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Done()
		<-release // a request stuck in a kernel call
	}), 1, 50*time.Millisecond, nil, nil)
	go h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	started.Wait()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"Err"`) {
		t.Fatalf("second request: %d %s", rec.Code, rec.Body)
	}
	close(release)
}

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
