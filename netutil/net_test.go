package netutil

import (
	"testing"
)

func TestRandomMAC(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		mac, err := RandomMAC()
		if err != nil {
			t.Fatal(err)
		}
		if mac[0]&0x01 != 0 || mac[0]&0x02 == 0 {
			t.Fatalf("%s is not a locally administered unicast MAC", mac)
		}
		seen[mac.String()] = true
	}
	if len(seen) < 99 {
		t.Fatalf("only %d distinct MACs in 100", len(seen))
	}
}
