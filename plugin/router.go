package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
)

// maxBody bounds request bodies. The engine's largest requests are those
// with a port map, CreateEndpoint and ProgramExternalConnectivity: about
// 110 bytes a binding, so 10,000 published ports take 1.1 MB and every
// port of both protocols (2 x 65,535 bindings) 14 MB.
const maxBody = 32 << 20

// manifest is the Plugin.Activate answer: one socket serves both APIs.
const manifest = `{"Implements":["NetworkDriver","IpamDriver"]}`

// ErrBadRequest marks errors caused by the request itself; they are
// answered with 400 instead of 500. The engine shows both the same way.
var ErrBadRequest = driver.ErrBadRequest

var (
	badRequest  = driver.BadRequest
	badRequestf = driver.BadRequestf
)

// Router serves the plugin protocol: it decodes, calls the driver, encodes.
type Router struct {
	mux *http.ServeMux
	log *slog.Logger
	// deadline bounds each call's work; answerBy, longer, bounds the wait
	// for its answer (see handle).
	deadline, answerBy time.Duration
	// activated is when the engine last handshook (Plugin.Activate, which
	// a starting dockerd sends before its first call), in Unix nanoseconds.
	activated atomic.Int64
}

// Activated returns when the engine last sent Plugin.Activate (zero: not
// since this process started).
func (r *Router) Activated() time.Time {
	if ns := r.activated.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// DefaultDeadline is the time each call's work gets. The engine gives
// legacy plugins no client timeout (protocol.md section 0), so mynet bounds
// itself: DefaultDeadline for the work, then up to a third more for a
// rollback, so that every answer comes within a minute of the call getting
// its slot (see Limit).
const DefaultDeadline = 45 * time.Second

// NewRouter returns a router with only Plugin.Activate registered. Each
// call's work gets deadline; its answer comes at the latest a third of the
// deadline later (see handle).
func NewRouter(log *slog.Logger, deadline time.Duration) *Router {
	r := &Router{mux: http.NewServeMux(), log: log, deadline: deadline, answerBy: deadline + deadline/3}
	r.mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		r.activated.Store(time.Now().UnixNano())
		w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
		io.WriteString(w, manifest+"\n")
	})
	return r
}

// ServeHTTP makes the router an http.Handler. Unknown paths get 404, which
// the engine reads as "not implemented".
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.mux.ServeHTTP(w, req) }

// empty is the request or response of calls without a body.
type empty struct{}

// handle registers one protocol method. Every method goes through the same
// decoding, limits, deadline, logging and error encoding, so the twenty
// routes are one line each.
//
// An answered call never changes mynet's state afterwards. The work runs
// with the router's deadline in its context; every creating operation
// checks it between its steps and, on expiry, rolls back what it did and
// only then returns its error, naming the operation, the object and the
// deadline. A kernel call that hangs cannot be interrupted, though, so the
// answer has a last-resort bound, answerBy, after which the call is
// answered with a 503 while its work still runs. The outcome is a latch
// (driver.WithLatch): an operation commits only through its commit point,
// and the bound answers an error only if it can close the latch first; the late
// work then finds it closed and rolls back instead of committing. If the
// operation committed first, the answer waits for it and tells the truth.
// Removals are different: see handleRemoval.
func handle[Req, Resp any](r *Router, method string, fn func(context.Context, *Req) (*Resp, error)) {
	register(r, method, fn, false)
}

// handleRemoval registers a method that removes or releases something.
// The engine treats such a call as done whatever mynet answers: errors of
// DeleteEndpoint, DeleteNetwork, RevokeExternalConnectivity and Leave only
// reach its log (protocol.md, "How a plugin error becomes an engine error"), and
// so do those of ReleaseAddress and ReleasePool. Refusing one at the
// deadline would leave mynet holding what the engine has let go: an
// address it hands out again, a port it publishes again. A removal
// therefore always completes, its kernel steps included; only its answer
// is bounded. Should it outlast the last-resort bound, the error answered
// then says that it goes on.
func handleRemoval[Req, Resp any](r *Router, method string, fn func(context.Context, *Req) (*Resp, error)) {
	register(r, method, fn, true)
}

func register[Req, Resp any](r *Router, method string, fn func(context.Context, *Req) (*Resp, error), removal bool) {
	r.mux.HandleFunc("POST /"+method, func(w http.ResponseWriter, hr *http.Request) {
		start := time.Now()
		req := new(Req)
		if err := decode(w, hr, req); err != nil {
			r.log.Warn("undecodable request", "op", method, "err", err)
			writeError(w, err)
			return
		}
		ids := requestIDs(req)
		cause := fmt.Errorf("%s%s did not finish within mynet's deadline of %v: %w", method, describeIDs(ids), r.deadline, context.DeadlineExceeded)
		ctx, cancel := context.WithTimeoutCause(hr.Context(), r.deadline, cause)
		defer cancel()
		ctx, abandon := driver.WithLatch(ctx)
		// The work keeps this call's slot of Limit until it ends, even
		// when the answer goes first, so that work stuck in the kernel
		// cannot pile up past the limit.
		release := detachSlot(hr.Context())
		type result struct {
			resp *Resp
			err  error
		}
		done := make(chan result, 1)
		go func() {
			defer release()
			resp, err := fn(ctx, req)
			done <- result{resp, err}
		}()
		bound := time.NewTimer(r.answerBy)
		defer bound.Stop()
		var res result
		select {
		case res = <-done:
		case <-bound.C:
			if removal {
				r.log.Error("request still running: answered with an error, the removal completes when the stuck step returns",
					append(ids, "op", method, "duration", time.Since(start).Round(time.Microsecond))...)
				writeErrorStatus(w, http.StatusServiceUnavailable, fmt.Sprintf(
					"%s%s did not finish within %v, a step is stuck in the kernel; a removal is not cancelled: it completes when the step returns; see mynet's log",
					method, describeIDs(ids), r.answerBy))
				return
			}
			if abandon() {
				r.log.Error("request abandoned: answered with an error, its work rolls back when the stuck step returns",
					append(ids, "op", method, "duration", time.Since(start).Round(time.Microsecond))...)
				writeErrorStatus(w, http.StatusServiceUnavailable, fmt.Sprintf(
					"%s%s did not finish within %v (deadline %v), a step is stuck in the kernel; it is cancelled and will be rolled back, not committed; see mynet's log, then retry",
					method, describeIDs(ids), r.answerBy, r.deadline))
				return
			}
			res = <-done // it committed: the answer must say so
		}
		attrs := append(ids, "op", method, "duration", time.Since(start).Round(time.Microsecond))
		if res.err != nil {
			r.log.Error("request failed", append(attrs, "err", res.err)...)
			writeError(w, res.err)
			return
		}
		r.log.Info("request", attrs...)
		var body any = res.resp
		if res.resp == nil {
			body = empty{}
		}
		sdk.EncodeResponse(w, body, false)
	})
}

// describeIDs formats requestIDs' pairs for an error message.
func describeIDs(ids []any) string {
	var b strings.Builder
	for i := 0; i+1 < len(ids); i += 2 {
		fmt.Fprintf(&b, " %v %v", strings.ReplaceAll(fmt.Sprint(ids[i]), "_id", ""), ids[i+1])
	}
	if b.Len() == 0 {
		return ""
	}
	return " (" + b.String()[1:] + ")"
}

// decode reads exactly one JSON value. Calls without arguments may have an
// empty body (the engine sends none for GetCapabilities).
func decode(w http.ResponseWriter, hr *http.Request, v any) error {
	body := http.MaxBytesReader(w, hr.Body, maxBody)
	dec := json.NewDecoder(body)
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		if _, isEmpty := v.(*empty); isEmpty {
			return nil
		}
		return badRequestf("empty request body")
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return badRequestf("request body exceeds %d bytes", maxBody)
	}
	if err != nil {
		return badRequestf("decode request: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequestf("trailing data after the JSON request")
	}
	return nil
}

// writeError answers with a non-200 status and {"Err": ...}. The engine
// reads Err from non-200 answers for both interfaces; the IPAM interface's
// 200-with-"Error" form is not needed.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrBadRequest):
		status = http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, driver.ErrAbandoned):
		status = http.StatusServiceUnavailable // rolled back: a retry may succeed
	}
	writeErrorStatus(w, status, err.Error())
}

func writeErrorStatus(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct{ Err string }{msg})
}

// requestIDs picks the IDs out of any request type for logging.
func requestIDs(req any) []any {
	v := reflect.Indirect(reflect.ValueOf(req))
	if v.Kind() != reflect.Struct {
		return nil
	}
	var out []any
	for _, f := range []struct{ field, key string }{{"NetworkID", "network_id"}, {"EndpointID", "endpoint_id"}, {"PoolID", "pool_id"}, {"Address", "address"}} {
		if fv := v.FieldByName(f.field); fv.IsValid() && fv.Kind() == reflect.String && fv.String() != "" {
			s := fv.String()
			if f.key != "pool_id" && f.key != "address" {
				s = model.Short(s)
			}
			out = append(out, f.key, s)
		}
	}
	return out
}
