package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
)

func TestClaimAddress(t *testing.T) {
	s := newStore(t, nil, nil)
	ctx := ctxT(t)
	// A /29: .0 network, .1 gateway, .7 broadcast; .2-.6 to hand out.
	if _, err := s.CreateOrJoinNetwork(ctx, spec("app", "10.77.0.0/29", "10.77.0.1"), "a"); err != nil {
		t.Fatal(err)
	}
	a, b := advert("a"), advert("b")
	withMAC := a
	withMAC.MAC, withMAC.Endpoint = "02:42:0a:4d:00:02", "e1"
	other := a
	other.Endpoint = "e2"
	none := netip.Addr{}
	ip := netip.MustParseAddr
	steps := []struct {
		name    string
		op      string // "claim" or "release"
		want    netip.Addr
		adv     model.EndpointAdvert
		got     netip.Addr
		wantErr error
		errHas  string
	}{
		{name: "first next", op: "claim", want: none, adv: a, got: ip("10.77.0.2")},
		{name: "next", op: "claim", want: none, adv: b, got: ip("10.77.0.3")},
		{name: "release first", op: "release", want: ip("10.77.0.2"), adv: a},
		{name: "round-robin skips the released", op: "claim", want: none, adv: b, got: ip("10.77.0.4")},
		{name: "given address", op: "claim", want: ip("10.77.0.6"), adv: a, got: ip("10.77.0.6")},
		{name: "given address held by another host", op: "claim", want: ip("10.77.0.3"), adv: a,
			wantErr: ErrAddressInUse, errHas: "10.77.0.3 on network app is held by host b"},
		{name: "same host again adds the MAC", op: "claim", want: ip("10.77.0.6"), adv: withMAC, got: ip("10.77.0.6")},
		{name: "same host, other endpoint", op: "claim", want: ip("10.77.0.6"), adv: other, wantErr: ErrAddressInUse},
		{name: "gateway", op: "claim", want: ip("10.77.0.1"), adv: a, wantErr: ipam.ErrOutOfRange, errHas: "gateway"},
		{name: "broadcast", op: "claim", want: ip("10.77.0.7"), adv: a, wantErr: ipam.ErrOutOfRange},
		{name: "outside", op: "claim", want: ip("10.78.0.2"), adv: a, wantErr: ipam.ErrOutOfRange},
		{name: "next wraps to the released", op: "claim", want: none, adv: a, got: ip("10.77.0.5")},
		{name: "wrapped", op: "claim", want: none, adv: a, got: ip("10.77.0.2")},
		{name: "exhausted", op: "claim", want: none, adv: a, wantErr: ipam.ErrExhausted, errHas: "network app: no free address"},
		{name: "unknown network", op: "claim", want: none, adv: a, wantErr: ErrNetworkNotFound},
		{name: "release of another host's claim leaves it", op: "release", want: ip("10.77.0.3"), adv: a},
		{name: "release twice", op: "release", want: ip("10.77.0.2"), adv: a},
		{name: "release twice more", op: "release", want: ip("10.77.0.2"), adv: a},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			network := "app"
			if st.name == "unknown network" {
				network = "nosuch"
			}
			var got netip.Addr
			var err error
			if st.op == "release" {
				err = s.ReleaseAddress(ctx, network, st.want, st.adv.Host)
			} else {
				got, err = s.ClaimAddress(ctx, network, st.want, st.adv)
			}
			if !errors.Is(err, st.wantErr) || err != nil && !strings.Contains(err.Error(), st.errHas) {
				t.Fatalf("err = %v, want %v naming %q", err, st.wantErr, st.errHas)
			}
			if err == nil && st.op == "claim" && got != st.got {
				t.Fatalf("got %s, want %s", got, st.got)
			}
		})
	}
	advs, _, err := s.Claims(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]model.EndpointAdvert{}
	for _, adv := range advs {
		held[adv.IP.String()] = adv
	}
	if len(held) != 4 || held["10.77.0.3"].Host != "b" || held["10.77.0.6"].MAC != withMAC.MAC || held["10.77.0.6"].Endpoint != "e1" {
		t.Errorf("claims at the end: %+v", advs)
	}
}

// TestClaimRace: two hosts on their own clients claim 20 addresses each
// at once from a /26; all 40 are distinct, follow one cluster-wide
// round-robin (the lowest 40), and the 62nd and 63rd fail as exhausted.
func TestClaimRace(t *testing.T) {
	stores := []*Store{newStore(t, nil, nil), newStore(t, nil, nil)}
	ctx := ctxT(t)
	for i, h := range []string{"a", "b"} {
		if _, err := stores[i].CreateOrJoinNetwork(ctx, spec("app", "10.77.0.0/26", "10.77.0.1"), h); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i, h := range []string{"a", "b"} {
		for range 20 {
			wg.Go(func() {
				got, err := stores[i].ClaimAddress(ctx, "app", netip.Addr{}, advert(h))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, dup := owner[got]; dup {
					errs <- fmt.Errorf("%s handed out to %s and %s", got, prev, h)
				}
				owner[got] = h
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 2; i < 42; i++ {
		if a := netip.AddrFrom4([4]byte{10, 77, 0, byte(i)}); owner[a] == "" {
			t.Errorf("%s not handed out: the round-robin skipped it", a)
		}
	}
	// 61 host addresses (.2-.62): 21 more fit, the next one does not.
	for i := range 22 {
		_, err := stores[i%2].ClaimAddress(ctx, "app", netip.Addr{}, advert("a"))
		if i < 21 && err != nil {
			t.Fatalf("claim %d: %v", 41+i, err)
		}
		if i == 21 && !errors.Is(err, ipam.ErrExhausted) {
			t.Fatalf("claim past the end: %v, want ErrExhausted", err)
		}
	}
}
