package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestServeClusterFlags(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(pem, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--cluster-store", "etcd://198.19.77.1:2379", "--vtep-addr", "198.19.77.10"}
	for _, c := range []struct {
		args      []string
		errPart   string
		endpoints []string
	}{
		{args: nil},
		{args: base, endpoints: []string{"198.19.77.1:2379"}},
		{args: []string{"--cluster-store", "etcd://198.19.77.1:2379,198.19.77.2:2379", "--vtep-iface", "eth0"}, endpoints: []string{"198.19.77.1:2379", "198.19.77.2:2379"}},
		{args: []string{"--cluster-store", "https://[fd00::1]:2379", "--vtep-addr", "fd00::2"}, endpoints: []string{"[fd00::1]:2379"}},
		{args: []string{"--vtep-addr", "198.19.77.10"}, errPart: "need --cluster-store"},
		{args: []string{"--cluster-store", "etcd://198.19.77.1"}, errPart: "not etcd://HOST:PORT"},
		{args: []string{"--cluster-store", "zk://198.19.77.1:2181", "--vtep-addr", "198.19.77.10"}, errPart: `scheme "zk"`},
		{args: []string{"--cluster-store", "198.19.77.1:99999", "--vtep-addr", "198.19.77.10"}, errPart: "out of range"},
		{args: []string{"--cluster-store", "etcd://198.19.77.1:2379"}, errPart: "needs this host's VTEP"},
		{args: append(base, "--vtep-iface", "eth0"), errPart: "not both"},
		{args: append(base, "--vxlan-port", "0"), errPart: "--vxlan-port 0 is out of range"},
		{args: append(base, "--host-id", "a/b"), errPart: "--host-id"},
		{args: append(base, "--cluster-cert", pem), errPart: "together"},
		{args: append(base, "--cluster-ca", filepath.Join(dir, "missing.pem")), errPart: "--cluster-ca"},
		{args: append(base, "--cluster-ca", pem), endpoints: []string{"198.19.77.1:2379"}},
	} {
		f, err := parseServeFlags(c.args)
		switch {
		case c.errPart == "" && err != nil:
			t.Errorf("serve %q: %v", c.args, err)
		case c.errPart != "" && (err == nil || !strings.Contains(err.Error(), c.errPart)):
			t.Errorf("serve %q: error %v, want %q", c.args, err, c.errPart)
		case c.errPart == "" && !reflect.DeepEqual(f.cluster.endpoints, c.endpoints):
			t.Errorf("serve %q: endpoints %q, want %q", c.args, f.cluster.endpoints, c.endpoints)
		}
	}
}

// The host ID is created once and kept; a damaged file is refused.
func TestHostID(t *testing.T) {
	dir := t.TempDir()
	var c clusterFlags
	id, err := c.resolveHostID(dir)
	if err != nil || id == "" {
		t.Fatalf("resolveHostID = %q, %v", id, err)
	}
	again, err := c.resolveHostID(dir)
	if err != nil || again != id {
		t.Fatalf("second resolveHostID = %q, %v; want %q", again, err, id)
	}
	c.hostID = "given"
	if got, _ := c.resolveHostID(dir); got != "given" {
		t.Errorf("--host-id ignored: %q", got)
	}
	c.hostID = ""
	if err := os.WriteFile(filepath.Join(dir, "host-id"), []byte("a/b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.resolveHostID(dir); err == nil || !strings.Contains(err.Error(), "--host-id") {
		t.Errorf("damaged host-id file: %v", err)
	}
}

// The VTEP must be an address of this host; its interface gives the MTU.
func TestResolveVTEP(t *testing.T) {
	c := clusterFlags{vtepAddr: "127.0.0.1"}
	if _, _, err := c.resolveVTEP(); err == nil {
		t.Error("loopback accepted as a VTEP")
	}
	c = clusterFlags{vtepAddr: "198.18.255.254"}
	if _, _, err := c.resolveVTEP(); err == nil || !strings.Contains(err.Error(), "not an address of this host") {
		t.Errorf("foreign VTEP: %v", err)
	}
	c = clusterFlags{vtepIf: "mynet-no-such-if"}
	if _, _, err := c.resolveVTEP(); err == nil || !strings.Contains(err.Error(), "no such interface") {
		t.Errorf("missing interface: %v", err)
	}
}
