package netutil

import (
	"errors"
	"fmt"
	"log/slog"
)

// Undo is a stack of compensating actions for a multi-step operation.
//
// Each successful step pushes its inverse; when a later step fails the caller
// runs the stack, newest first, so the kernel and the state are left as they
// were found. It is used with a named return error:
//
//	func create() (retErr error) {
//		var undo netutil.Undo
//		defer func() { undo.RunIf(retErr, log) }()
//		...
//	}
//
// rather than an `if err != nil` defer over a shadowable err, which silently
// skips cleanup when an inner scope redeclares err.
type Undo struct {
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func() error
}

// Push records the inverse of a step that has just succeeded.
func (u *Undo) Push(what string, fn func() error) {
	u.steps = append(u.steps, undoStep{what: what, fn: fn})
}

// RunIf runs the stack when err is non-nil and returns the joined cleanup
// errors. Cleanup errors are logged at Warn: the original error is what the
// caller returns, the cleanup failures are for the operator.
func (u *Undo) RunIf(err error, log *slog.Logger) error {
	if err == nil {
		return nil
	}
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		s := u.steps[i]
		if cerr := s.fn(); cerr != nil {
			log.Warn("rollback step failed", "step", s.what, "err", cerr)
			errs = append(errs, cerr)
		}
	}
	u.steps = nil
	return errors.Join(errs...)
}

// Rollback is RunIf for a deferred call on a named return error: when
// *retErr is set, it runs the stack and adds any cleanup failure to
// *retErr, so the caller learns that something it created may remain.
//
//	defer undo.Rollback(&retErr, log)
func (u *Undo) Rollback(retErr *error, log *slog.Logger) {
	if cerr := u.RunIf(*retErr, log); cerr != nil {
		*retErr = fmt.Errorf("%w (rollback incomplete: %w)", *retErr, cerr)
	}
}
