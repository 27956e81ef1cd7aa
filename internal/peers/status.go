package peers

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// Status is what the agent knows, for the doctor, the CLI and metrics.
type Status struct {
	HostID string `json:"hostId"`
	// Degraded: this host is cut off from the cluster store.
	Degraded bool `json:"degraded"`
	// Hosts as last listed (HostsListed); nil before the first listing.
	Hosts       []HostStatus    `json:"hosts"`
	HostsListed time.Time       `json:"hostsListed,omitzero"`
	Networks    []NetworkStatus `json:"networks"`
	// Conflicts are claims found held by another host on re-assertion.
	Conflicts []Conflict `json:"conflicts,omitempty"`
	// VTEPs the VXLAN port's filter accepts, as last applied.
	VTEPs []netip.Addr `json:"vteps"`
}

// HostStatus is a registered host.
type HostStatus struct {
	ID    string     `json:"id"`
	VTEP  netip.Addr `json:"vtep"`
	Alive bool       `json:"alive"`
	// DeadSince is when this host first saw the liveness key gone.
	DeadSince time.Time `json:"deadSince,omitzero"`
}

// NetworkStatus is one followed cluster network.
type NetworkStatus struct {
	Name      string `json:"name"`
	NetworkID string `json:"networkId"`
	VNI       uint32 `json:"vni"`
	Device    string `json:"device"`
	// Peers are the wanted remote endpoints, sorted by address.
	Peers      []Peer `json:"peers"`
	FDBEntries int    `json:"fdbEntries"`
	// Listed: the peers come from the store, not only the local copy.
	Listed   bool      `json:"listed"`
	LastSync time.Time `json:"lastSync,omitzero"`
	// LastError of a failed write or sync, until a sync succeeds.
	LastError string `json:"lastError,omitempty"`
}

// Peer is a remote endpoint as shown to clients.
type Peer struct {
	IP   netip.Addr `json:"ip"`
	MAC  string     `json:"mac"`
	VTEP netip.Addr `json:"vtep"`
	Host string     `json:"host,omitempty"`
}

// VXLANPeer is p as the dataplane takes it.
func (p Peer) VXLANPeer() (model.VXLANPeer, error) {
	mac, err := parseMAC(p.MAC)
	return model.VXLANPeer{IP: p.IP, MAC: mac, VTEP: p.VTEP}, err
}

// Conflict is a claim of this host found held by another.
type Conflict struct {
	Network  string     `json:"network"`
	IP       netip.Addr `json:"ip"`
	Endpoint string     `json:"endpoint,omitempty"`
	Err      string     `json:"error"`
	At       time.Time  `json:"at"`
}

// Status reads the agent's state; Degraded is read live.
func (a *Agent) Status() Status {
	up := a.cfg.Registration == nil || a.cfg.Registration.Up()
	a.mu.Lock()
	st := Status{
		HostID:      a.cfg.HostID,
		Degraded:    !up,
		HostsListed: a.listed,
		Conflicts:   slices.Clone(a.conflicts),
		VTEPs:       slices.Clone(a.filter),
	}
	for _, h := range a.hosts {
		st.Hosts = append(st.Hosts, HostStatus{ID: h.ID, VTEP: h.VTEP, Alive: h.Alive, DeadSince: a.deadSince[h.ID]})
	}
	nets := make([]*network, 0, len(a.nets))
	for _, nw := range a.nets {
		nets = append(nets, nw)
	}
	a.mu.Unlock()
	for _, nw := range nets {
		st.Networks = append(st.Networks, nw.status())
	}
	slices.SortFunc(st.Networks, func(a, b NetworkStatus) int { return strings.Compare(a.Name, b.Name) })
	return st
}

func (nw *network) status() NetworkStatus {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	s := NetworkStatus{
		Name: nw.name, NetworkID: nw.n.ID, VNI: nw.vx.VNI, Device: model.VXLANName(nw.vx.VNI),
		Peers: make([]Peer, 0, len(nw.want)), FDBEntries: nw.fdb, Listed: nw.listed,
		LastSync: nw.lastSync, LastError: nw.lastErr,
	}
	for _, p := range nw.want {
		s.Peers = append(s.Peers, Peer{IP: p.IP, MAC: p.MAC.String(), VTEP: p.VTEP, Host: p.host})
	}
	slices.SortFunc(s.Peers, func(a, b Peer) int { return a.IP.Compare(b.IP) })
	return s
}

// NetworkReport is a network's status with what the store says of it.
type NetworkReport struct {
	NetworkStatus
	Subnet  netip.Prefix `json:"subnet,omitzero"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	Members []string     `json:"members"`
	// StoreError: the store's record could not be read.
	StoreError string `json:"storeError,omitempty"`
}

// Report is the answer of the daemon's Mynet.Cluster method.
type Report struct {
	Status
	Networks []NetworkReport `json:"networks"`
}

// Report is Status with each network's record read from the store
// (subnet, members), each read bounded by a short timeout so that a
// degraded host still answers at once with what it knows.
func (a *Agent) Report(ctx context.Context) Report {
	st := a.Status()
	r := Report{Status: st}
	r.Status.Networks = nil
	for _, ns := range st.Networks {
		nr := NetworkReport{NetworkStatus: ns}
		if !st.Degraded {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			rec, err := a.cfg.Store.Network(cctx, ns.Name)
			cancel()
			if err != nil {
				nr.StoreError = err.Error()
			} else {
				nr.Subnet, nr.Gateway, nr.Members = rec.Spec.Subnet, rec.Spec.Gateway, rec.Members
			}
		} else {
			nr.StoreError = "degraded: cut off from the cluster store"
		}
		r.Networks = append(r.Networks, nr)
	}
	return r
}
