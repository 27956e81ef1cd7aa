package metrics

import (
	"strings"
	"testing"
)

func TestClusterMetrics(t *testing.T) {
	single := New(nil, nil)
	if out := scrape(t, single); strings.Contains(out, "mynet_cluster_") {
		t.Errorf("a single-host instance exports cluster metrics:\n%s", out)
	}
	m := New(nil, nil)
	sample := ClusterSample{StoreUp: true, Networks: []ClusterNetworkSample{{Name: "appnet", Peers: 3, FDBEntries: 2}}}
	c := m.RegisterCluster(func() ClusterSample { return sample })
	c.Conflicts.Inc()
	c.StoreRequest("claim").Observe(0.004)
	out := scrape(t, m)
	for _, want := range []string{
		"mynet_cluster_store_up 1",
		`mynet_cluster_peers{network="appnet"} 3`,
		`mynet_cluster_fdb_entries{network="appnet"} 2`,
		"mynet_cluster_conflicts_total 1",
		`mynet_cluster_store_request_duration_seconds_count{op="claim"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	sample.StoreUp = false
	if out := scrape(t, m); !strings.Contains(out, "mynet_cluster_store_up 0") {
		t.Error("degraded host: store_up is not 0")
	}
}
