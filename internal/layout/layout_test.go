package layout

import (
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	module = "github.com/mynet/mynet"

	maxFileLines = 500 // production (non-_test) files
	maxFuncLines = 70  // from the func line to the closing brace, inclusive
)

// rules lists, for each package of the module (path relative to the
// module root, "." for the root), the packages of ours it may import.
// A package that does not exist (yet) is skipped; a package that exists
// but has no rule is a violation, so that a new package gets a place in
// the layers on purpose. The layers, top to bottom:
//
//	cmd/mynet -> internal/doctor -> internal/cli -> plugin -> internal/driver
//	  -> ipam, state, bridge, metrics -> internal/model
//
// Nothing imports upward; the model imports nothing of ours; state, ipam
// and bridge do not import each other; internal/driver does not import
// bridge (it defines the interfaces it needs, cmd/mynet wires bridge in).
// The utilities may be imported by anyone and import nothing of ours.
// Only production imports count: tests may reach further (fakes, nstest).
var rules = map[string][]string{
	"cmd/mynet":       {"internal/peers", "internal/cli", "internal/doctor", "plugin", "internal/driver", "internal/portalloc", "internal/cluster", "ipam", "state", "bridge", "metrics", "internal/model"},
	"internal/cli":    {"internal/peers", "plugin", "internal/driver", "ipam", "state", "metrics", "internal/model"},
	"internal/doctor": {"internal/cli", "internal/peers", "plugin", "internal/driver", "ipam", "state", "bridge", "metrics", "internal/model"},
	"plugin":          {"internal/driver", "internal/portalloc", "ipam", "state", "metrics", "internal/model"},
	"internal/driver": {"internal/portalloc", "ipam", "state", "metrics", "internal/model"},
	// Host-port allocation, a pure package beside ipam if it gets its own.
	"internal/portalloc": {"internal/model"},
	"ipam":               {"internal/model"},
	"state":              {"internal/model"},
	"bridge":             {"internal/model"},
	// The cluster store (etcd); ipam's Pool picks the next address.
	"internal/cluster": {"ipam", "internal/model"},
	// The peers agent: watch -> VXLAN entries, janitor, degraded; the
	// dataplane and the local copy through its own small interfaces.
	"internal/peers": {"internal/cluster", "internal/model"},
	// The state gauges read the state's snapshot type.
	"metrics":        {"state", "internal/model"},
	"internal/model": nil,

	// Tools and tests outside the daemon: they may use anything below.
	"internal/layout": nil,
	// A fake of the driver's dataplane, for the tests of driver and plugin.
	"internal/driver/drivertest": {"internal/model"},
	"internal/daemontest":        {"cmd/mynet", "internal/cli", "internal/doctor", "plugin", "internal/driver", "ipam", "state", "bridge", "metrics", "internal/model"},
	"bench/cmd/mynet-bench":      {"internal/model"},
	"bench/cmd/netbench":         nil,
	"e2e":                        {"internal/model"},

	// A throwaway etcd server for the tests of the cluster store.
	"internal/cluster/etcdtest": nil,
	"e2e/cluster":               {"internal/model"},
}

// utilities may be imported by any package and import nothing of ours.
var utilities = []string{"netutil", "netutil/failpoint", "netutil/nstest"}

// TestLayout reports every violation, not only the first, so that one
// run gives the whole list.
func TestLayout(t *testing.T) {
	root := moduleRoot(t)
	files := goFiles(t, root)
	t.Run("FileSize", func(t *testing.T) {
		for _, v := range fileSizes(t, root, files) {
			t.Error(v)
		}
	})
	t.Run("FuncLength", func(t *testing.T) {
		for _, v := range funcLengths(t, root, files) {
			t.Error(v)
		}
	})
	t.Run("Imports", func(t *testing.T) {
		for _, v := range importDirection(t, root, files) {
			t.Error(v)
		}
	})
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// goFiles returns the module's Go files relative to root, leaving out
// what the go tool leaves out: testdata, vendor and names starting with
// "." or "_".
func goFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (name == "testdata" || name == "vendor" ||
				strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") && !strings.HasPrefix(name, ".") && !strings.HasPrefix(name, "_") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func production(file string) bool { return !strings.HasSuffix(file, "_test.go") }

func fileSizes(t *testing.T, root string, files []string) []string {
	t.Helper()
	var out []string
	for _, f := range files {
		if !production(f) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		n := strings.Count(string(b), "\n")
		if len(b) > 0 && b[len(b)-1] != '\n' {
			n++
		}
		if n > maxFileLines {
			out = append(out, fmt.Sprintf("%s: %d lines, over the limit of %d", f, n, maxFileLines))
		}
	}
	return out
}

func funcLengths(t *testing.T, root string, files []string) []string {
	t.Helper()
	var out []string
	fset := token.NewFileSet()
	for _, f := range files {
		if !production(f) {
			continue
		}
		file, err := parser.ParseFile(fset, filepath.Join(root, f), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		if ast.IsGenerated(file) {
			continue
		}
		for _, decl := range file.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			start, end := fset.Position(fn.Pos()), fset.Position(fn.End())
			if n := end.Line - start.Line + 1; n > maxFuncLines {
				out = append(out, fmt.Sprintf("%s:%d: func %s: %d lines, over the limit of %d",
					f, start.Line, funcName(fn), n, maxFuncLines))
			}
		}
	}
	return out
}

func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	typ := fn.Recv.List[0].Type
	for {
		switch x := typ.(type) {
		case *ast.StarExpr:
			typ = x.X
			continue
		case *ast.IndexExpr:
			typ = x.X
			continue
		case *ast.IndexListExpr:
			typ = x.X
			continue
		case *ast.Ident:
			return "(" + x.Name + ")." + fn.Name.Name
		}
		return fn.Name.Name
	}
}

// importDirection checks the production imports of every package with
// Go files against the rule table. It reads them with go/build for this
// platform, as the compiler would, so a file for another OS or behind a
// build tag does not count.
func importDirection(t *testing.T, root string, files []string) []string {
	t.Helper()
	dirs := map[string]bool{}
	for _, f := range files {
		dirs[filepath.ToSlash(filepath.Dir(f))] = true
	}
	var out []string
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		pkg, err := build.Default.ImportDir(filepath.Join(root, dir), 0)
		if err != nil {
			var noGo *build.NoGoError
			if errors.As(err, &noGo) {
				continue // only files behind build tags
			}
			t.Fatalf("%s: %v", dir, err)
		}
		if len(pkg.GoFiles) == 0 {
			continue // tests only: only production imports count
		}
		out = append(out, checkImports(dir, pkg.Imports)...)
	}
	return out
}

// checkImports returns the violations of the package at dir (relative to
// the module root) importing imports.
func checkImports(dir string, imports []string) []string {
	var out []string
	ours := func(p string) (string, bool) {
		if p == module {
			return ".", true
		}
		rel, ok := strings.CutPrefix(p, module+"/")
		return rel, ok
	}
	var mine []string
	for _, imp := range imports {
		if rel, ok := ours(imp); ok {
			mine = append(mine, rel)
		}
	}
	if slices.Contains(utilities, dir) {
		for _, rel := range mine {
			out = append(out, fmt.Sprintf("%s imports %s: a utility imports nothing of ours", dir, rel))
		}
		return out
	}
	allowed, known := rules[dir]
	if !known {
		return append(out, fmt.Sprintf("%s: package not in the rule table of internal/layout: give it a place in the layers", dir))
	}
	for _, rel := range mine {
		if slices.Contains(utilities, rel) || slices.Contains(allowed, rel) {
			continue
		}
		out = append(out, fmt.Sprintf("%s imports %s: not allowed by the layers (%s may import: %s)",
			dir, rel, dir, describe(allowed)))
	}
	return out
}

func describe(allowed []string) string {
	if len(allowed) == 0 {
		return "utilities only"
	}
	return strings.Join(allowed, ", ") + " and utilities"
}

// TestCheckImports keeps the checker itself honest: each rule of the
// issue that asked for it must catch its violation.
func TestCheckImports(t *testing.T) {
	tests := []struct {
		name    string
		dir     string
		imports []string
		want    int // violations
	}{
		{"down the layers", "plugin", []string{module + "/internal/driver", module + "/state", "fmt"}, 0},
		{"utilities from anywhere", "internal/model", []string{module + "/netutil"}, 0},
		{"upward", "state", []string{module + "/plugin"}, 1},
		{"model imports nothing of ours", "internal/model", []string{module + "/state"}, 1},
		{"state and ipam are peers", "state", []string{module + "/ipam"}, 1},
		{"ipam and bridge are peers", "ipam", []string{module + "/bridge"}, 1},
		{"driver does not import bridge", "internal/driver", []string{module + "/bridge", module + "/ipam"}, 1},
		{"utility imports nothing of ours", "netutil", []string{module + "/internal/model"}, 1},
		{"the root package is ours too", "bridge", []string{module}, 1},
		{"unknown package", "internal/newthing", nil, 1},
		{"outside imports are free", "internal/model", []string{"golang.org/x/sys/unix"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkImports(tt.dir, tt.imports)
			if len(got) != tt.want {
				t.Errorf("checkImports(%q, %q) = %q, want %d violations", tt.dir, tt.imports, got, tt.want)
			}
		})
	}
}
