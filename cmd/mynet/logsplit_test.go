package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestLoggerSplitsByLevel: records below error go to stdout, which dockerd
// records at info for a managed plugin; error goes to stderr, which it
// records at error. Attributes and groups added with With reach both.
func TestLoggerSplitsByLevel(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var out, errOut bytes.Buffer
			log, err := newLogger("debug", format, &out, &errOut)
			if err != nil {
				t.Fatal(err)
			}
			log = log.With("plugin", "p1").WithGroup("g")
			log.Debug("m-debug")
			log.Info("m-info")
			log.Warn("m-warn")
			log.Error("m-error", "network", "n1")
			for _, c := range []struct {
				stream    string
				got       string
				want, not []string
			}{
				{"stdout", out.String(), []string{"m-debug", "m-info", "m-warn"}, []string{"m-error"}},
				{"stderr", errOut.String(), []string{"m-error"}, []string{"m-debug", "m-info", "m-warn"}},
			} {
				for _, w := range c.want {
					if !strings.Contains(c.got, w) {
						t.Errorf("%s lacks %s:\n%s", c.stream, w, c.got)
					}
				}
				for _, n := range c.not {
					if strings.Contains(c.got, n) {
						t.Errorf("%s has %s:\n%s", c.stream, n, c.got)
					}
				}
				if lines := strings.Count(c.got, "\n"); lines != strings.Count(c.got, "p1") {
					t.Errorf("%s: every record must carry the logger's attributes:\n%s", c.stream, c.got)
				}
			}
			if !strings.Contains(errOut.String(), "n1") {
				t.Errorf("stderr lacks the record's attribute:\n%s", errOut.String())
			}
		})
	}
}

// TestLoggerLevelFilter: --log-level still filters on both streams.
func TestLoggerLevelFilter(t *testing.T) {
	var out, errOut bytes.Buffer
	log, err := newLogger("error", "text", &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("m-warn")
	log.Error("m-error")
	if out.Len() != 0 || !strings.Contains(errOut.String(), "m-error") {
		t.Errorf("--log-level error: stdout %q, stderr %q", out.String(), errOut.String())
	}
	if _, err := newLogger("info", "xml", &out, &errOut); err == nil {
		t.Error("--log-format xml accepted")
	}
}
