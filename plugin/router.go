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
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/sdk"

	"github.com/mynet/mynet/netutil"
)

// maxBody bounds request bodies. The engine's largest request, a
// CreateEndpoint with a port map, is a few kilobytes.
const maxBody = 1 << 20

// manifest is the Plugin.Activate answer: one socket serves both APIs.
const manifest = `{"Implements":["NetworkDriver","IpamDriver"]}`

// ErrBadRequest marks errors caused by the request itself; they are
// answered with 400 instead of 500. The engine shows both the same way.
var ErrBadRequest = errors.New("bad request")

type badRequestError struct{ err error }

func (e badRequestError) Error() string    { return e.err.Error() }
func (e badRequestError) Unwrap() []error  { return []error{e.err, ErrBadRequest} }
func badRequest(err error) error           { return badRequestError{err} }
func badRequestf(f string, a ...any) error { return badRequest(fmt.Errorf(f, a...)) }

// Router serves the plugin protocol: it decodes, calls the driver, encodes.
type Router struct {
	mux     *http.ServeMux
	log     *slog.Logger
	timeout time.Duration
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

// NewRouter returns a router with only Plugin.Activate registered.
func NewRouter(log *slog.Logger, timeout time.Duration) *Router {
	r := &Router{mux: http.NewServeMux(), log: log, timeout: timeout}
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
func handle[Req, Resp any](r *Router, method string, fn func(context.Context, *Req) (*Resp, error)) {
	r.mux.HandleFunc("POST /"+method, func(w http.ResponseWriter, hr *http.Request) {
		start := time.Now()
		req := new(Req)
		if err := decode(w, hr, req); err != nil {
			r.log.Warn("undecodable request", "op", method, "err", err)
			writeError(w, err)
			return
		}
		ctx, cancel := context.WithTimeout(hr.Context(), r.timeout)
		defer cancel()
		resp, err := fn(ctx, req)
		attrs := append(requestIDs(req), "op", method, "duration", time.Since(start).Round(time.Microsecond))
		if err != nil {
			r.log.Error("request failed", append(attrs, "err", err)...)
			writeError(w, err)
			return
		}
		r.log.Info("request", attrs...)
		var out any = resp
		if resp == nil {
			out = empty{}
		}
		sdk.EncodeResponse(w, out, false)
	})
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
	if errors.Is(err, ErrBadRequest) {
		status = http.StatusBadRequest
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
				s = netutil.Short(s)
			}
			out = append(out, f.key, s)
		}
	}
	return out
}
