package plugin

import (
	"net/http"
	"time"
)

// Limit bounds the requests served at once. The engine gives legacy plugins
// no client timeout (protocol.md section 0), so a plugin that piles up
// goroutines behind one stuck kernel call would hang every docker command;
// with the bound, excess requests wait for a slot up to wait and then get
// a 503, which the engine reports as an error instead of hanging.
func Limit(h http.Handler, max int, wait time.Duration) http.Handler {
	slots := make(chan struct{}, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
			h.ServeHTTP(w, r)
		case <-t.C:
			writeErrorStatus(w, http.StatusServiceUnavailable, "mynet is busy: too many requests in progress; retry")
		case <-r.Context().Done():
		}
	})
}
