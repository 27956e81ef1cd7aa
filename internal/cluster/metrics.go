package cluster

import "time"

// Counter counts events; a prometheus.Counter is one.
type Counter interface{ Inc() }

// Histogram records observations; a prometheus.Histogram (or a
// HistogramVec's WithLabelValues) is one.
type Histogram interface{ Observe(float64) }

// Gauge is set to a value; a prometheus.Gauge is one.
type Gauge interface{ Set(float64) }

// Metrics are the store's hooks. Every field may be nil. The names the
// daemon should register them under are in the comments.
type Metrics struct {
	// RequestDuration returns the histogram of one kind of store call
	// ("create", "claim", "release", "leave", "list", "register",
	// "free"...), in seconds: mynet_cluster_store_request_duration_seconds{op}.
	RequestDuration func(op string) Histogram
	// Conflicts counts refused creates, claims of taken addresses and
	// host-ID clashes: mynet_cluster_conflicts_total.
	Conflicts Counter
	// StoreUp is 1 while the host's lease is kept alive, 0 once it is
	// lost: mynet_cluster_store_up.
	StoreUp Gauge
}

func (m Metrics) observe(op string, d time.Duration) {
	if m.RequestDuration == nil {
		return
	}
	if h := m.RequestDuration(op); h != nil {
		h.Observe(d.Seconds())
	}
}

func (m Metrics) conflict() {
	if m.Conflicts != nil {
		m.Conflicts.Inc()
	}
}

func (m Metrics) up(up bool) {
	if m.StoreUp == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.StoreUp.Set(v)
}
