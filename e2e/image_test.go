package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// udpechoSource is the UDP echo server the image carries as /bin/udpecho
// (busybox nc has no UDP mode); embedded only so that its hash names the
// image.
//
//go:embed testdata/udpecho/main.go
var udpechoSource []byte

// testImage is built locally because no registry is reachable. An existing
// image is reused as is, so its tag must change with its content: the
// suffix follows udpecho's source; bump the number for any other change.
var testImage = fmt.Sprintf("mynet-e2e-busybox:2-%x", sha256.Sum256(udpechoSource))[:len("mynet-e2e-busybox:2-")+12]

const (
	// udpechoPackage is built into the image; go test runs in e2e/.
	udpechoPackage = "./testdata/udpecho"
	// busyboxPath must be a static build (Debian's busybox-static): the
	// image has no libc.
	busyboxPath = "/bin/busybox"
	// httpdPage is the content of /index.html in the image, so that
	// `httpd -h /` (the README example) serves something to check for.
	httpdPage = "mynet e2e says hello\n"
)

// ensureImage imports testImage unless it exists: a root filesystem holding
// only busybox, one symlink per applet, index.html and /bin/udpecho.
func ensureImage() error {
	if _, err := run("docker", "image", "inspect", testImage); err == nil {
		return nil
	}
	start := time.Now()
	rootfs, err := busyboxRootfs()
	if err != nil {
		return err
	}
	if _, err := runWithInput(rootfs, "docker", "import", "--change", "ENV PATH=/bin", "-", testImage); err != nil {
		return err
	}
	fmt.Printf("e2e: imported %s in %v\n", testImage, time.Since(start).Round(time.Millisecond))
	return nil
}

// busyboxRootfs returns the image's root filesystem as a tar stream, written
// directly instead of tarring a temporary directory.
func busyboxRootfs() (*bytes.Buffer, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, err
	}
	udpecho, err := buildStatic(udpechoPackage)
	if err != nil {
		return nil, err
	}
	list, err := run(busyboxPath, "--list")
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		if err == nil {
			err = tw.WriteHeader(h)
		}
		if err == nil && body != nil {
			_, err = tw.Write(body)
		}
	}
	now := time.Now()
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: now}, nil)
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: now}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: now}, bin)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/udpecho", Mode: 0o755, Size: int64(len(udpecho)), ModTime: now}, udpecho)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "index.html", Mode: 0o644, Size: int64(len(httpdPage)), ModTime: now}, []byte(httpdPage))
	for _, applet := range strings.Fields(list) {
		if applet != "busybox" {
			add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, ModTime: now}, nil)
		}
	}
	if err == nil {
		err = tw.Close()
	}
	return &buf, err
}

// buildStatic builds a main package of this module without cgo, so that it
// runs in an image without libc, and returns the binary. go test puts its
// own go command first on PATH.
func buildStatic(pkg string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "mynet-e2e-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
	}
	if err := requireStatic(out); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// requireStatic fails unless path is a statically linked ELF binary.
func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}
