package driver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// ErrBadRequest marks errors caused by the request itself; the protocol
// answers them with 400 instead of 500. The engine shows both the same way.
var ErrBadRequest = errors.New("bad request")

// ErrNotFound means the driver has no record of a network or endpoint.
var ErrNotFound = errors.New("not found")

type badRequestError struct{ err error }

func (e badRequestError) Error() string   { return e.err.Error() }
func (e badRequestError) Unwrap() []error { return []error{e.err, ErrBadRequest} }

// BadRequest marks err as caused by the request (ErrBadRequest).
func BadRequest(err error) error { return badRequestError{err} }

// BadRequestf is BadRequest of a formatted error.
func BadRequestf(f string, a ...any) error { return BadRequest(fmt.Errorf(f, a...)) }

// ErrAbandoned is the error of work whose call was already answered.
var ErrAbandoned = errors.New("the request was already answered with an error")

// latch holds the fate of one call's work: it commits, or it was
// abandoned by an answer sent before it finished; never both.
type latch struct{ state atomic.Int32 }

const (
	latchOpen int32 = iota
	latchCommitted
	latchAbandoned
)

type latchKey struct{}

// WithLatch returns a context for one call's work, and abandon, which
// reports whether the caller may answer with an error before the work
// ended: true closes the latch, and the work then rolls back at its commit
// point instead of committing; false means the work has committed and its
// answer must say so.
func WithLatch(ctx context.Context) (_ context.Context, abandon func() bool) {
	l := &latch{}
	return context.WithValue(ctx, latchKey{}, l), func() bool {
		return l.state.CompareAndSwap(latchOpen, latchAbandoned) || l.state.Load() == latchAbandoned
	}
}

// commitPoint is called by an operation that creates or allocates just
// before the step that makes it take effect (the committed record of a
// create, a pool or an address written to the store, published ports). An
// error means the operation must not take effect: roll back and return it.
// Once it has returned nil, the operation is committed: its answer waits
// for it, and the steps after it run to the end.
func commitPoint(ctx context.Context) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	l, ok := ctx.Value(latchKey{}).(*latch)
	if ok && !l.state.CompareAndSwap(latchOpen, latchCommitted) && l.state.Load() != latchCommitted {
		return ErrAbandoned
	}
	return nil
}

// ctxErr is ctx's error with its cause, which names the call and the
// deadline, or nil while ctx is live.
func ctxErr(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return context.Cause(ctx)
}

// commitCreate runs the crash-safe create sequence: a pending record, the
// kernel objects, the committed record; on failure it undoes whatever was
// done, newest first. The request's deadline is checked before each step,
// and the committed record is written only through commitPoint: a create
// whose deadline passed, or whose call was already answered, is rolled back
// before it returns, never committed later.
//
// Failpoints "<kind>.create.pending" and "<kind>.create.committed" stop it
// after each record write.
func (d *Driver) commitCreate(ctx context.Context, kind, id string, put func(pending bool) error, del, ensure, remove func() error) (retErr error) {
	what := kind + " " + model.Short(id)
	if err := ctxErr(ctx); err != nil {
		return err // it waited too long for its locks: nothing done
	}
	d.touch(kind, id)
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, d.log); cerr != nil {
			d.log.Warn("rollback incomplete; the startup reconcile removes the rest", "object", what, "err", cerr)
		}
	}()
	if err := put(true); err != nil {
		return err
	}
	undo.Push("delete record of "+what, del)
	if err := failpoint.Inject(kind + ".create.pending"); err != nil {
		return err
	}
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("rolled back: %w", err)
	}
	if err := ensure(); err != nil {
		return err // ensure undid its own steps, also when cut short
	}
	undo.Push("remove kernel objects of "+what, remove)
	if err := commitPoint(ctx); err != nil {
		return fmt.Errorf("rolled back: %w", err)
	}
	if err := put(false); err != nil {
		return err
	}
	return failpoint.Inject(kind + ".create.committed")
}
