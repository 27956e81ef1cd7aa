package main

import (
	"errors"
	"fmt"

	"github.com/mynet/mynet/state"
)

// stateError marks a state file mynet cannot use; main exits with 78 on it.
type stateError struct{ err error }

func (e stateError) Error() string { return e.err.Error() }
func (e stateError) Unwrap() error { return e.err }

// unusableFile is the error for a state file that Open or Load refused,
// with the ways out.
func unusableFile(err error, path string) error {
	if !errors.Is(err, state.ErrUnusable) {
		return stateError{err}
	}
	return stateError{fmt.Errorf("%w\nmynet changed nothing in the kernel. To recover, with mynet stopped: put back a good copy of %s if there is one "+
		"(running containers keep their network), or move the file aside (mv %s %s.bad) and start once with "+
		"mynet serve --discard-orphans, which deletes the bridges and veths the lost state described: their containers "+
		"lose their network until their networks are recreated", err, path, path, path)}
}
