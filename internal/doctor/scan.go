package doctor

// One read of the kernel: the links and the iptables rules of both
// backends.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/vishvananda/netlink"
)

// linkInfo is one link, as the doctor needs it.
type linkInfo struct {
	name, alias, kind string
	index, master     int
}

// tableDump is `iptables -S` of one table in one backend and family.
type tableDump struct {
	family  string // iptables or ip6tables
	backend string // nf_tables or legacy
	bin     string // the binary that reads and changes it
	table   string
	lines   []string
}

// scan is one read of the kernel objects the doctor looks at.
type scan struct {
	links   map[string]linkInfo
	linkErr error
	dumps   []tableDump
}

const (
	backendNFT    = "nf_tables"
	backendLegacy = "legacy"
)

func (d *doctor) scan(ctx context.Context, nl *netlink.Handle) scan {
	var sc scan
	links, err := nl.LinkList()
	for i := 0; i < 5 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		links, err = nl.LinkList()
	}
	if err != nil {
		sc.linkErr = err
	} else {
		sc.links = map[string]linkInfo{}
		for _, l := range links {
			a := l.Attrs()
			sc.links[a.Name] = linkInfo{name: a.Name, alias: a.Alias, kind: l.Type(), index: a.Index, master: a.MasterIndex}
		}
	}
	if os.Geteuid() != 0 {
		return sc
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{backendNFT, backendLegacy} {
			bin := backendBinary(ctx, family, backend)
			if bin == "" {
				continue
			}
			for _, table := range []string{model.TableFilter, model.TableNAT, model.TableMangle} {
				// Listing a legacy table creates it, after which every
				// iptables-nft call warns about legacy tables: only read
				// the ones that exist.
				if backend == backendLegacy && !d.legacyTableExists(family, table) {
					continue
				}
				lines, err := iptablesDump(ctx, bin, table)
				if err != nil {
					continue
				}
				sc.dumps = append(sc.dumps, tableDump{family: family, backend: backend, bin: bin, table: table, lines: lines})
			}
		}
	}
	return sc
}

// backendBinary finds the binary of one backend: iptables-nft or
// iptables-legacy, else plain iptables when it is of that backend.
func backendBinary(ctx context.Context, family, backend string) string {
	suffix := "-nft"
	if backend == backendLegacy {
		suffix = "-legacy"
	}
	if p, err := exec.LookPath(family + suffix); err == nil {
		return p
	}
	if p, err := exec.LookPath(family); err == nil && iptablesBackend(ctx, p) == backend {
		return p
	}
	return ""
}

// iptablesBackend runs BIN --version: "iptables v1.8.9 (nf_tables)".
func iptablesBackend(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	if bytes.Contains(out, []byte("nf_tables")) {
		return backendNFT
	}
	return backendLegacy
}

func (d *doctor) legacyTableExists(family, table string) bool {
	f := "ip_tables_names"
	if family == "ip6tables" {
		f = "ip6_tables_names"
	}
	b, err := os.ReadFile(filepath.Join(d.procNet, f))
	if err != nil {
		return false
	}
	return slices.Contains(strings.Fields(string(b)), table)
}

func iptablesDump(ctx context.Context, bin, table string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-w", "10", "-t", table, "-S")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s -S: %w: %s", bin, table, err, strings.TrimSpace(errOut.String()))
	}
	var lines []string
	s := bufio.NewScanner(&out)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, s.Err()
}

func hasChain(lines []string, match func(string) bool) bool {
	for _, l := range lines {
		if name, ok := strings.CutPrefix(l, "-N "); ok && match(name) {
			return true
		}
	}
	return false
}

func isDockerChain(name string) bool { return name == "DOCKER" || strings.HasPrefix(name, "DOCKER-") }

// instanceChains is the set of chain names of the instance.
func instanceChains(instance string) map[string]bool {
	m := map[string]bool{}
	for _, c := range model.ChainsFor(instance).All() {
		m[c] = true
	}
	return m
}
