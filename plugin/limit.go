package plugin

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// bodyReadTimeout is how long a request that got its slot has to send its
// body (at most maxBody, over a local socket).
const bodyReadTimeout = 10 * time.Second

// Gauge is what Limit reports its queue to; a prometheus.Gauge is one.
type Gauge interface {
	Inc()
	Dec()
}

// Limit bounds the requests served at once. The engine gives legacy plugins
// no client timeout (protocol.md section 0), so a plugin that piles up
// goroutines behind one stuck kernel call would hang every docker command;
// with the bound, excess requests wait for a slot up to wait and then get
// a 503, which the engine reports as an error instead of hanging. A
// request is refused before anything of it is done, and one that got its
// slot late still gets the router's whole deadline, which starts then.
//
// waiting counts the requests waiting for a slot, and serving those holding
// one; either may be nil. A call answered before its work ended (see
// handle) holds its slot, and counts as served, until the work ends.
func Limit(h http.Handler, max int, wait time.Duration, waiting, serving Gauge) http.Handler {
	slots := make(chan struct{}, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(wait)
		defer t.Stop()
		add(waiting, 1)
		select {
		case slots <- struct{}{}:
			add(waiting, -1)
			add(serving, 1)
			s := &slot{release: func() { add(serving, -1); <-slots }}
			defer s.done()
			if r.Context().Err() != nil {
				return // the client went away while it waited
			}
			// The server's read timeout runs from the request's first byte,
			// and the body is read only now: a request that waited for its
			// slot gets time to send it. Not every writer supports it
			// (tests' recorders do not); the server's timeout then stays.
			http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), slotKey{}, s)))
		case <-t.C:
			add(waiting, -1)
			writeErrorStatus(w, http.StatusServiceUnavailable, "mynet is busy: too many requests in progress; retry")
		case <-r.Context().Done():
			add(waiting, -1)
		}
	})
}

func add(g Gauge, delta int) {
	switch {
	case g == nil:
	case delta > 0:
		g.Inc()
	default:
		g.Dec()
	}
}

// slot is one request's place in Limit. It is given back when the handler
// returns, unless the handler detached it for work that outlives the
// answer; then when that work ends.
// Detaching happens in the handler's goroutine, before done is called.
type slot struct {
	detached bool
	release  func()
	once     sync.Once
}

type slotKey struct{}

func (s *slot) done() {
	if !s.detached {
		s.once.Do(s.release)
	}
}

// detachSlot takes over the slot of the request with context ctx, if
// Limit gave it one, and returns the func that gives it back.
func detachSlot(ctx context.Context) (release func()) {
	s, ok := ctx.Value(slotKey{}).(*slot)
	if !ok {
		return func() {}
	}
	s.detached = true
	return func() { s.once.Do(s.release) }
}
