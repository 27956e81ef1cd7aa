package e2e

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"strings"
	"time"
)

const (
	// testImage is built locally because no registry is reachable. Bump the
	// tag whenever its content changes: an existing image is reused as is.
	testImage = "mynet-e2e-busybox:1"
	// busyboxPath must be a static build (Debian's busybox-static): the
	// image has no libc.
	busyboxPath = "/bin/busybox"
	// httpdPage is the content of /index.html in the image, so that
	// `httpd -h /` (the README example) serves something to check for.
	httpdPage = "mynet e2e says hello\n"
)

// ensureImage imports testImage unless it exists: a root filesystem holding
// only busybox, one symlink per applet, and index.html.
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
