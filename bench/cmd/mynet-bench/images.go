package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ensureBusybox makes the busybox image exist: reused when present (the
// e2e suite's image by default), else imported from the host's static
// busybox the way e2e/image_test.go does (no registry needed).
func (b *bench) ensureBusybox(ctx context.Context) error {
	if _, err := docker(ctx, "image", "inspect", b.cfg.image); err == nil {
		return nil
	}
	buf, err := b.busyboxTar(ctx)
	if err != nil {
		return err
	}
	return b.importImage(ctx, buf, b.cfg.image, "ENV PATH=/bin")
}

// busyboxTar is the busybox image's root filesystem as a tar stream.
func (b *bench) busyboxTar(ctx context.Context) (*bytes.Buffer, error) {
	const busybox = "/bin/busybox"
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("image %s is missing and cannot be built: %w (install busybox-static)", b.cfg.image, err)
	}
	list, err := runCmd(ctx, nil, busybox, "--list")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h *tar.Header, body []byte) {
		h.ModTime = now
		if err == nil {
			err = tw.WriteHeader(h)
		}
		if err == nil && body != nil {
			_, err = tw.Write(body)
		}
	}
	page := []byte("mynet e2e says hello\n")
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}, nil)
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "index.html", Mode: 0o644, Size: int64(len(page))}, page)
	for _, applet := range strings.Fields(list) {
		if applet != "busybox" {
			add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil)
		}
	}
	if err == nil {
		err = tw.Close()
	}
	return &buf, err
}

// ensureNetbench builds netbench if needed and imports it alone into an
// image named after its hash.
func (b *bench) ensureNetbench(ctx context.Context) (string, error) {
	img, buf, err := b.netbenchTar(ctx)
	if err != nil {
		return "", err
	}
	if _, err := docker(ctx, "image", "inspect", img); err == nil {
		return img, nil
	}
	return img, b.importImage(ctx, buf, img, netbenchChange)
}

// netbenchChange makes netbench the image's entry point.
const netbenchChange = `ENTRYPOINT ["/netbench"]`

// netbenchBinary is the static netbench binary, built if needed.
func (b *bench) netbenchBinary(ctx context.Context) (string, error) {
	bin := b.cfg.netbenchBin
	if _, err := os.Stat(bin); err != nil {
		bin = filepath.Join(b.workDir, "netbench")
		logf("phase 7: building %s (no %s)", bin, b.cfg.netbenchBin)
		if err := buildStatic(ctx, "./bench/cmd/netbench", bin); err != nil {
			return "", err
		}
	}
	return bin, nil
}

// netbenchTar is the netbench image (named after the binary's hash) and
// its root filesystem: netbench alone.
func (b *bench) netbenchTar(ctx context.Context) (string, *bytes.Buffer, error) {
	bin, err := b.netbenchBinary(ctx)
	if err != nil {
		return "", nil, err
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		return "", nil, err
	}
	img := fmt.Sprintf("mynet-bench-netbench:%x", sha256.Sum256(raw))[:len("mynet-bench-netbench:")+12]
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "netbench", Mode: 0o755, Size: int64(len(raw)), ModTime: time.Now()}); err != nil {
		return "", nil, err
	}
	if _, err := tw.Write(raw); err != nil {
		return "", nil, err
	}
	return img, &buf, tw.Close()
}

func (b *bench) importImage(ctx context.Context, rootfs *bytes.Buffer, name, change string) error {
	start := time.Now()
	if _, err := runCmd(ctx, rootfs, "docker", "import", "--change", change, "-", name); err != nil {
		return err
	}
	logf("imported %s in %v", name, time.Since(start).Round(time.Millisecond))
	if b.cfg.rmImages {
		b.cleanup.push("remove image "+name, func(ctx context.Context) error {
			_, err := docker(ctx, "image", "rm", name)
			return err
		})
	}
	return nil
}
