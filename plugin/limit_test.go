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
	}), 1, 50*time.Millisecond)
	go h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	started.Wait()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"Err"`) {
		t.Fatalf("second request: %d %s", rec.Code, rec.Body)
	}
	close(release)
}
