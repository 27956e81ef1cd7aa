package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// metricsClient reads an instance's Prometheus metrics from its
// --metrics-socket.
type metricsClient struct {
	sock string
	http *http.Client
}

func newMetricsClient(sock string) *metricsClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	return &metricsClient{sock: sock, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// sample is one line of the text format: name{labels} value.
type sample struct {
	name, labels string
	value        float64
}

func (m *metricsClient) scrape(ctx context.Context) ([]sample, error) {
	if m == nil {
		return nil, fmt.Errorf("no metrics listener (internal error: the instance was started without --metrics-socket)")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mynet/metrics", nil)
	if err != nil {
		return nil, err
	}
	r, err := m.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", m.sock, err)
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: HTTP %d", m.sock, r.StatusCode)
	}
	return parseSamples(r.Body)
}

// parseSamples reads Prometheus' text format, comments left out.
func parseSamples(rd io.Reader) ([]sample, error) {
	var out []sample
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		s := sample{name: l[:i], value: v}
		if j := strings.IndexByte(s.name, '{'); j >= 0 {
			s.name, s.labels = l[:j], l[j:i]
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// sum adds the samples named name whose labels contain every one of
// labels (`code="503"`).
func sum(ss []sample, name string, labels ...string) float64 {
	var t float64
	for _, s := range ss {
		if s.name != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(s.labels, l)
		}
		if ok {
			t += s.value
		}
	}
	return t
}

// busy is the count of requests answered 503 so far: refused by the
// request limit ("mynet is busy") or answered at the deadline.
func (m *metricsClient) busy(ctx context.Context) (float64, error) {
	ss, err := m.scrape(ctx)
	if err != nil {
		return 0, err
	}
	return sum(ss, "mynet_request_errors_total", `code="503"`), nil
}

// histo is one series of a histogram: its count, sum and cumulative
// buckets.
type histo struct {
	Count   float64
	Sum     float64
	buckets map[float64]float64 // le -> cumulative count
}

func histogram(ss []sample, name, label string) histo {
	h := histo{buckets: map[float64]float64{}}
	for _, s := range ss {
		if !strings.Contains(s.labels, label) {
			continue
		}
		switch s.name {
		case name + "_count":
			h.Count = s.value
		case name + "_sum":
			h.Sum = s.value
		case name + "_bucket":
			_, le, _ := strings.Cut(s.labels, `le="`)
			le, _, _ = strings.Cut(le, `"`)
			if f, err := strconv.ParseFloat(le, 64); err == nil {
				h.buckets[f] = s.value
			}
		}
	}
	return h
}

// since is h minus an earlier scrape of the same series.
func (h histo) since(old histo) histo {
	d := histo{Count: h.Count - old.Count, Sum: h.Sum - old.Sum, buckets: map[float64]float64{}}
	for le, v := range h.buckets {
		d.buckets[le] = v - old.buckets[le]
	}
	return d
}

// maxBound is the smallest bucket bound that holds every observation: the
// largest one was at most this. NaN without observations, +Inf beyond the
// last bucket.
func (h histo) maxBound() float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	les := make([]float64, 0, len(h.buckets))
	for le := range h.buckets {
		les = append(les, le)
	}
	slices.Sort(les)
	for _, le := range les {
		if h.buckets[le] >= h.Count {
			return le
		}
	}
	return math.Inf(1)
}
