package main

import (
	"context"
	"io"
	"log/slog"
)

// A managed plugin's stdout and stderr become dockerd's own log records:
// makeLoggerStreams in moby's plugin/manager.go (v20.10.24 and v28.5.2;
// daemon/pkg/plugin/manager.go on master) wraps them in logrus writers at
// InfoLevel and ErrorLevel. Everything on stderr therefore reads as
// level=error in the engine's log, whatever mynet's own level says. So
// records below error go to stdout and the rest to stderr, in both
// deployments: under systemd, journald keeps both streams in one journal.

// levelSplit routes a record by level to one of two handlers.
type levelSplit struct {
	low, high slog.Handler // below slog.LevelError; error and above
}

// newLevelSplit builds handlers of one format (text or json) on out and errOut.
func newLevelSplit(out, errOut io.Writer, opts *slog.HandlerOptions, json bool) slog.Handler {
	if json {
		return levelSplit{low: slog.NewJSONHandler(out, opts), high: slog.NewJSONHandler(errOut, opts)}
	}
	return levelSplit{low: slog.NewTextHandler(out, opts), high: slog.NewTextHandler(errOut, opts)}
}

func (h levelSplit) pick(l slog.Level) slog.Handler {
	if l >= slog.LevelError {
		return h.high
	}
	return h.low
}

func (h levelSplit) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h levelSplit) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h levelSplit) WithAttrs(attrs []slog.Attr) slog.Handler {
	return levelSplit{low: h.low.WithAttrs(attrs), high: h.high.WithAttrs(attrs)}
}

func (h levelSplit) WithGroup(name string) slog.Handler {
	return levelSplit{low: h.low.WithGroup(name), high: h.high.WithGroup(name)}
}
