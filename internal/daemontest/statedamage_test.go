package daemontest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// damagedState is a daemon with one network and one endpoint, stopped,
// and what the namespace looked like then.
type damagedState struct {
	d            *daemon
	s            *script
	path         string
	links, addrs string
	bridge, veth string
	original     []byte
}

func newDamagedState(t *testing.T) *damagedState {
	ns := newNS(t)
	d := startDaemon(t, ns)
	s := &script{nid: randHex(32), eid: randHex(32), mac: crashMAC}
	for _, step := range engineSteps[:5] { // up to CreateEndpoint
		out := d.mustCall(step.method, step.body(s))
		if step.after != nil {
			step.after(s, out)
		}
	}
	d.stop()
	ds := &damagedState{d: d, s: s, path: filepath.Join(d.dir, state.FileName), bridge: model.BridgeName(s.nid)}
	ds.veth, _ = model.VethNames(s.eid)
	ds.links, ds.addrs = ds.kernel(t)
	if !strings.Contains(ds.links, ds.bridge) || !strings.Contains(ds.links, ds.veth) || !strings.Contains(ds.addrs, "10.77.0.1/24") {
		t.Fatalf("unexpected starting point:\n%s\n%s", ds.links, ds.addrs)
	}
	var err error
	if ds.original, err = os.ReadFile(ds.path); err != nil {
		t.Fatal(err)
	}
	return ds
}

// kernel is the namespace's links (with their masters and aliases) and
// addresses, and mynet's rules.
func (ds *damagedState) kernel(t *testing.T) (links, addrs string) {
	ns := ds.d.ns
	var out []string
	for _, l := range strings.Split(ns.run(t, "ip", "-o", "-d", "link", "show"), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		keep := []string{f[1]}
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "alias" || f[i] == "master" {
				keep = append(keep, f[i], f[i+1])
			}
		}
		out = append(out, strings.Join(keep, " "))
	}
	return strings.Join(out, "\n") + "\n" + ns.snapshot(t), ns.run(t, "ip", "-o", "addr", "show")
}

// putRaw replaces one record of the stopped daemon's file.
func (ds *damagedState) putRaw(t *testing.T, bucket, key, value string) {
	t.Helper()
	db, err := bolt.Open(ds.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if value == "" {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), []byte(value))
	}); err != nil {
		t.Fatal(err)
	}
}

// corruptRoot overwrites the root bucket's page, as named by the newer
// meta page, with garbage: bbolt panics on it.
func (ds *damagedState) corruptRoot(t *testing.T) {
	t.Helper()
	b := ds.original
	size := int64(binary.LittleEndian.Uint32(b[16+8:]))
	meta := b[:]
	if binary.LittleEndian.Uint64(b[size+16+48:]) > binary.LittleEndian.Uint64(b[16+48:]) {
		meta = b[size:]
	}
	root := int64(binary.LittleEndian.Uint64(meta[16+16:]))
	f, err := os.OpenFile(ds.path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, int(size)), root*size); err != nil {
		t.Fatal(err)
	}
}

// refused starts the daemon and expects it to exit with 78 at once.
func (ds *damagedState) refused(t *testing.T, wants ...string) {
	t.Helper()
	d := ds.d
	d.log.Reset()
	cmd := exec.Command("ip", append([]string{"netns", "exec", d.ns.name, daemonBin, "serve", "--name", d.name,
		"--state-dir", d.dir, "--reconcile-interval", "0"}, d.args...)...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		os.Remove(d.sock)
		t.Fatalf("the daemon did not exit; log:\n%s", d.log)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 78 {
		t.Fatalf("exit %v, want status 78; log:\n%s", err, d.log)
	}
	out := d.log.String()
	t.Logf("refused:\n%s", out)
	for _, w := range append(wants, ds.path, "Recovering the state") {
		if !strings.Contains(out, w) {
			t.Errorf("the message does not name %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "goroutine ") {
		t.Errorf("a stack trace instead of a message:\n%s", out)
	}
	links, addrs := ds.kernel(t)
	if links != ds.links || addrs != ds.addrs {
		t.Fatalf("the refused start changed the kernel:\n--- before\n%s\n%s\n--- after\n%s\n%s", ds.links, ds.addrs, links, addrs)
	}
}

// serves starts the daemon and checks what it keeps.
func (ds *damagedState) serves(t *testing.T, keeps bool) {
	t.Helper()
	ds.d.start("")
	st := ds.d.state()
	links, addrs := ds.kernel(t)
	if keeps {
		if len(st.Networks) != 1 || len(st.Endpoints) != 1 || links != ds.links || addrs != ds.addrs {
			t.Fatalf("state %+v; kernel:\n--- before\n%s\n%s\n--- after\n%s\n%s", st, ds.links, ds.addrs, links, addrs)
		}
		return
	}
	if len(st.Networks)+len(st.Endpoints) != 0 || strings.Contains(links, "mynet:") || strings.Contains(links, ds.bridge) || strings.Contains(links, "net="+ds.s.nid) {
		t.Fatalf("after the discard: state %+v, links and rules:\n%s", st, links)
	}
}

// TestDamagedStateRefused: a state file that mynet cannot fully trust
// makes it exit 78 with a message naming the file and the record, before
// it touches the kernel: the bridge and veth of the running container stay,
// with their addresses. The recovery paths of the README then work: the
// original file put back, or the file moved aside and
// serve --discard-orphans.
func TestDamagedStateRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, ds *damagedState)
		wants  []string
	}{
		{"zero-length", func(t *testing.T, ds *damagedState) {
			if err := os.Truncate(ds.path, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{"new, empty state", "--discard-orphans"}},
		{"undecodable record", func(t *testing.T, ds *damagedState) {
			ds.putRaw(t, "networks", ds.s.nid, "{not json")
		}, []string{"record networks/"}},
		{"invalid pool", func(t *testing.T, ds *damagedState) {
			ds.putRaw(t, "pools", ds.s.pool, `{"ID":"`+ds.s.pool+`","Pool":"garbage"}`)
		}, []string{"record pools/" + "POOL"}},
		{"corrupted page", func(t *testing.T, ds *damagedState) { ds.corruptRoot(t) }, []string{"corrupted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := newDamagedState(t)
			for i, w := range tc.wants {
				tc.wants[i] = strings.ReplaceAll(w, "POOL", ds.s.pool)
			}
			tc.damage(t, ds)
			ds.refused(t, tc.wants...)

			t.Log("recovery: put the original file back")
			if err := os.WriteFile(ds.path, ds.original, 0o600); err != nil {
				t.Fatal(err)
			}
			ds.serves(t, true)
			ds.d.stop()

			t.Log("recovery: move the file aside; the new state refuses, then --discard-orphans")
			tc.damage(t, ds)
			if err := os.Rename(ds.path, ds.path+".bad"); err != nil {
				t.Fatal(err)
			}
			ds.refused(t, "new, empty state", ds.bridge, ds.veth, "--discard-orphans")
			ds.d.args = []string{"--discard-orphans"}
			ds.serves(t, false)
		})
	}
}

// TestForeignGeneration: links of this instance created under another
// state file are neither adopted nor deleted, even by a state that is not
// new; --discard-orphans deletes the unknown ones.
func TestForeignGeneration(t *testing.T) {
	ds := newDamagedState(t)
	ns := ds.d.ns
	other := "mnx-other"
	ns.run(t, "ip", "link", "add", other, "type", "bridge")
	ns.run(t, "ip", "link", "set", other, "alias", model.Tag{Instance: ds.d.name, Generation: "0badc0de", Kind: "net", ID: randHex(32)}.String())
	ds.links, ds.addrs = ds.kernel(t)
	ds.refused(t, other, "generation 0badc0de", "--discard-orphans")
	ds.d.args = []string{"--discard-orphans"}
	ds.d.start("")
	if links := ns.run(t, "ip", "-o", "link", "show"); strings.Contains(links, other) || !strings.Contains(links, ds.bridge) || !strings.Contains(links, ds.veth) {
		t.Fatalf("--discard-orphans: want %s gone and %s, %s kept:\n%s", other, ds.bridge, ds.veth, links)
	}
	if st := ds.d.state(); len(st.Endpoints) != 1 {
		t.Fatalf("state after the discard: %+v", st)
	}
}

// TestUpgradeRetagsLegacyLinks: a state file of the previous release (no
// generation) decodes fully, so its instance's links, tagged in the old
// format, are its own: they are retagged, not refused nor deleted.
func TestUpgradeRetagsLegacyLinks(t *testing.T) {
	ds := newDamagedState(t)
	ns := ds.d.ns
	ds.putRaw(t, "meta", "generation", "") // as the previous release wrote it
	ds.putRaw(t, "meta", "unclaimed", "")
	for kind, name := range map[string]string{"net": ds.bridge, "ep": ds.veth} {
		id := ds.s.nid
		if kind == "ep" {
			id = ds.s.eid
		}
		ns.run(t, "ip", "link", "set", name, "alias", model.Tag{Instance: ds.d.name, Kind: kind, ID: id}.String())
	}
	ds.d.start("")
	st := ds.d.state()
	if len(st.Networks) != 1 || len(st.Endpoints) != 1 {
		t.Fatalf("state after the upgrade: %+v", st)
	}
	raw := ds.d.mustCall("Mynet.State", nil)
	gen, _ := raw["Generation"].(string)
	links := ns.run(t, "ip", "-o", "-d", "link", "show")
	for _, want := range []string{model.Tag{Instance: ds.d.name, Generation: gen, Kind: "net", ID: ds.s.nid}.String(), model.Tag{Instance: ds.d.name, Generation: gen, Kind: "ep", ID: ds.s.eid}.String()} {
		if gen == "" || !strings.Contains(links, want) {
			t.Fatalf("want alias %q (generation %q):\n%s", want, gen, links)
		}
	}
}

// TestDoctorListsForeignObjects: with the daemon refusing to start, doctor
// reads the state file itself and lists each tagged link the daemon will
// not start with, with the command that resolves it.
func TestDoctorListsForeignObjects(t *testing.T) {
	ds := newDamagedState(t)
	doctor := func() string {
		out, _ := exec.Command("ip", "netns", "exec", ds.d.ns.name, daemonBin, "doctor", "--name", ds.d.name, "--state-dir", ds.d.dir).CombinedOutput()
		return string(out)
	}
	if out := doctor(); strings.Contains(out, "foreign_link") || !strings.Contains(out, "accounts for the 2 links") {
		t.Errorf("doctor on an intact, stopped state:\n%s", out)
	}
	if err := os.Truncate(ds.path, 0); err != nil {
		t.Fatal(err)
	}
	out := doctor()
	for _, want := range []string{"foreign_link", ds.bridge, ds.veth, "ip link del " + ds.bridge, "ip link del " + ds.veth,
		"mynet serve --discard-orphans --name " + ds.d.name + " --state-dir " + ds.d.dir, "foreign_rules"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor on a zero-length state does not say %q:\n%s", want, out)
		}
	}
	if err := os.WriteFile(ds.path, ds.original, 0o600); err != nil {
		t.Fatal(err)
	}
	ds.putRaw(t, "networks", ds.s.nid, "{not json")
	out = doctor()
	for _, want := range []string{"state_file", "record networks/" + ds.s.nid, ds.bridge, "Recovering the state"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor on a damaged state does not say %q:\n%s", want, out)
		}
	}
	if links, addrs := ds.kernel(t); links != ds.links || addrs != ds.addrs {
		t.Fatal("doctor changed the kernel")
	}
	t.Log(out)
}

// TestMetaPageDamageWarns: a damaged meta page that bbolt recovers from
// by itself is logged as a warning at start; here the older one, so the
// state is whole and the daemon serves it.
func TestMetaPageDamageWarns(t *testing.T) {
	ds := newDamagedState(t)
	b := ds.original
	size := int64(binary.LittleEndian.Uint32(b[16+8:]))
	older := int64(0)
	if binary.LittleEndian.Uint64(b[16+48:]) > binary.LittleEndian.Uint64(b[size+16+48:]) {
		older = 1
	}
	f, err := os.OpenFile(ds.path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, older*size+16+40); err != nil { // its high-water mark
		t.Fatal(err)
	}
	f.Close()
	ds.d.log.Reset()
	ds.serves(t, true)
	if log := ds.d.log.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "meta page") {
		t.Fatalf("no warning about the meta page:\n%s", log)
	}
}
