package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ClusterSample is what the cluster gauges show at a scrape, read from
// the peers agent (peers.Agent.Status) by the function given to
// RegisterCluster.
type ClusterSample struct {
	// StoreUp: this host holds its liveness lease (not degraded).
	StoreUp  bool
	Networks []ClusterNetworkSample
}

// ClusterNetworkSample is one cluster network's counts.
type ClusterNetworkSample struct {
	Name       string
	Peers      int // remote endpoints kept as entries
	FDBEntries int // FDB entries after the last sync (one per remote MAC)
}

// Cluster holds the cluster mode's metrics that are counted or timed as
// they happen; the gauges are read at scrape time.
type Cluster struct {
	// Conflicts is mynet_cluster_conflicts_total, for
	// cluster.Metrics.Conflicts: refused creates, claims of taken
	// addresses (the re-asserted ones after a partition included) and
	// host-ID clashes.
	Conflicts prometheus.Counter
	// Repairs is mynet_cluster_resync_repairs_total, for
	// peers.Metrics.Repairs.
	Repairs  prometheus.Counter
	duration *prometheus.HistogramVec
}

// StoreRequest is the histogram of one kind of store call
// (mynet_cluster_store_request_duration_seconds{op}), for
// cluster.Metrics.RequestDuration.
func (c *Cluster) StoreRequest(op string) prometheus.Observer { return c.duration.WithLabelValues(op) }

// RegisterCluster adds the cluster metrics to m; call it in cluster mode
// only, so that a single-host instance exports none of them. sample is
// called at each scrape.
func (m *Metrics) RegisterCluster(sample func() ClusterSample) *Cluster {
	c := &Cluster{
		Conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "cluster_conflicts_total",
			Help: "Cluster store writes refused because another host holds the object: a network with another spec, a claimed address (also one lost during a partition), a host ID in use.",
		}),
		Repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "cluster_resync_repairs_total",
			Help: "Resyncs that found VXLAN FDB or neighbour entries changed from outside and rewrote them.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cluster_store_request_duration_seconds",
			Help:    "Time of each cluster store (etcd) call, by operation: create, claim, release, leave, list, register, free...",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"op"}),
	}
	m.reg.MustRegister(c.Conflicts, c.Repairs, c.duration, &clusterCollector{sample: sample})
	return c
}

var (
	descStoreUp = prometheus.NewDesc(namespace+"_cluster_store_up",
		"1 while this host holds its liveness lease in the cluster store, 0 while it is cut off (degraded).", nil, nil)
	descPeers = prometheus.NewDesc(namespace+"_cluster_peers",
		"Remote endpoints of a cluster network kept as VXLAN entries on this host.", []string{"network"}, nil)
	descFDB = prometheus.NewDesc(namespace+"_cluster_fdb_entries",
		"Permanent FDB entries of a cluster network's VXLAN device after the last sync.", []string{"network"}, nil)
)

type clusterCollector struct{ sample func() ClusterSample }

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStoreUp
	ch <- descPeers
	ch <- descFDB
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.sample()
	up := 0.0
	if s.StoreUp {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descStoreUp, prometheus.GaugeValue, up)
	for _, n := range s.Networks {
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n.Peers), n.Name)
		ch <- prometheus.MustNewConstMetric(descFDB, prometheus.GaugeValue, float64(n.FDBEntries), n.Name)
	}
}
