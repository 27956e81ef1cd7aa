package netutil

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
)

func TestRollback(t *testing.T) {
	errStep, errCleanup := errors.New("step failed"), errors.New("cleanup failed")
	for _, tc := range []struct {
		name     string
		retErr   error
		failUndo bool
		wantRan  []string
		wantIs   []error
		wantSame bool // *retErr is left as it was
	}{
		{name: "success runs nothing", retErr: nil, wantRan: nil, wantSame: true},
		{name: "failure runs newest first", retErr: errStep, wantRan: []string{"b", "a"}, wantIs: []error{errStep}, wantSame: true},
		{name: "a failed cleanup is added", retErr: errStep, failUndo: true, wantRan: []string{"b", "a"}, wantIs: []error{errStep, errCleanup}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			var u Undo
			for _, name := range []string{"a", "b"} {
				u.Push(name, func() error {
					ran = append(ran, name)
					if tc.failUndo && name == "a" {
						return errCleanup
					}
					return nil
				})
			}
			err := tc.retErr
			u.Rollback(&err, slog.New(slog.DiscardHandler))
			if !slices.Equal(ran, tc.wantRan) {
				t.Errorf("ran %v, want %v", ran, tc.wantRan)
			}
			for _, want := range tc.wantIs {
				if !errors.Is(err, want) {
					t.Errorf("error %v does not wrap %v", err, want)
				}
			}
			if tc.wantSame && err != tc.retErr {
				t.Errorf("error %v, want it unchanged (%v)", err, tc.retErr)
			}
		})
	}
}
