package driver

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestAllocationPastDeadline: an address or pool request that waited past
// its deadline (here for the IPAM lock) is refused and allocates nothing.
func TestAllocationPastDeadline(t *testing.T) {
	d := newTestDriver(t, Config{})
	pool, err := d.RequestPool(t.Context(), PoolRequest{Subnet: netip.MustParsePrefix("10.1.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		call func(context.Context) error
		want string
	}{
		{"RequestAddress", func(ctx context.Context) error {
			_, err := d.RequestAddress(ctx, AddressRequest{PoolID: pool, Owner: "02:42:0a:01:00:02"})
			return err
		}, "nothing allocated"},
		{"RequestPool", func(ctx context.Context) error {
			_, err := d.RequestPool(ctx, PoolRequest{Subnet: netip.MustParsePrefix("10.2.0.0/24")})
			return err
		}, "nothing reserved"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		ctx, _ = WithLatch(ctx)
		d.ipamMu.Lock()
		done := make(chan error)
		go func() { done <- c.call(ctx) }()
		time.Sleep(300 * time.Millisecond)
		d.ipamMu.Unlock()
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(fmtErr(err), c.want) {
			t.Errorf("%s past its deadline: %v; want a deadline error saying %q", c.name, err, c.want)
		}
		cancel()
	}
	snap, err := d.cfg.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pools) != 1 || len(snap.Pools[0].Addrs) != 0 {
		t.Fatalf("after the refused requests the store holds %+v; want one empty pool", snap.Pools)
	}
	if dump := d.Dump(); len(dump.Pools) != 1 || len(dump.Pools[0].Addrs) != 0 {
		t.Fatalf("after the refused requests the driver holds %+v; want one empty pool", dump.Pools)
	}
}

// TestCommitPointLatch: work commits only while its call has not been
// answered, and once committed, the answer may no longer abandon it.
func TestCommitPointLatch(t *testing.T) {
	for _, tc := range []struct {
		name         string
		abandonFirst bool
		wantCommit   error
		wantAbandon  bool
	}{
		{"commit first", false, nil, false},
		{"abandoned first", true, ErrAbandoned, true},
	} {
		ctx, abandon := WithLatch(t.Context())
		var abandoned bool
		if tc.abandonFirst {
			abandoned = abandon()
		}
		err := commitPoint(ctx)
		if !tc.abandonFirst {
			abandoned = abandon()
		}
		if !errors.Is(err, tc.wantCommit) || (tc.wantCommit == nil && err != nil) || abandoned != tc.wantAbandon {
			t.Errorf("%s: commit %v, abandoned %v; want %v, %v", tc.name, err, abandoned, tc.wantCommit, tc.wantAbandon)
		}
		if err2 := commitPoint(ctx); (err2 == nil) != (err == nil) {
			t.Errorf("%s: a second commit point gave %v after %v", tc.name, err2, err)
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
