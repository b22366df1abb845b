// Command imgbuild packs files from the host into a single-layer OCI image and writes it as a docker-archive
// tarball that `ctr -n k8s.io images import` loads, with no registry and no container engine.
//
//	imgbuild -t trellis.io/manager:dev -o manager.tar -entrypoint /manager -user 65532:65532 /manager=bin/manager
//
// Each argument maps a path in the image to a file on the host (symlinks are followed). Every image also gets
// /tmp (mode 1777), /run and /var/run (tools that take lock files need them), and an /etc/passwd and /etc/group
// naming root and nonroot (65532). Timestamps are zero, so the same inputs give the same image digest.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

type options struct {
	tag, out, entrypoint, cmd, user, workdir string
	env                                      multiFlag
	files                                    map[string]string // path in image -> host path
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var o options
	flag.StringVar(&o.tag, "t", "", "image reference, e.g. trellis.io/manager:dev (required)")
	flag.StringVar(&o.out, "o", "", "output docker-archive tarball (required)")
	flag.StringVar(&o.entrypoint, "entrypoint", "", "comma-separated entrypoint")
	flag.StringVar(&o.cmd, "cmd", "", "comma-separated default arguments")
	flag.StringVar(&o.user, "user", "", "user[:group] the image runs as (default root)")
	flag.StringVar(&o.workdir, "workdir", "/", "working directory")
	flag.Var(&o.env, "env", "KEY=VALUE added to the environment (repeatable)")
	flag.Parse()
	if o.tag == "" || o.out == "" {
		fail(fmt.Errorf("-t and -o are required"))
	}
	o.files = map[string]string{}
	for _, a := range flag.Args() {
		dst, src, ok := strings.Cut(a, "=")
		if !ok || dst == "" || src == "" {
			fail(fmt.Errorf("argument %q: want /path/in/image=/path/on/host", a))
		}
		o.files[path.Clean("/"+dst)] = src
	}
	if err := build(o); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "imgbuild:", err)
	os.Exit(1)
}

func build(o options) error {
	layerTar, err := layer(o.files)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = v1.Config{
		Env:        append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, o.env...),
		User:       o.user,
		WorkingDir: o.workdir,
		Entrypoint: split(o.entrypoint),
		Cmd:        split(o.cmd),
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(o.out, ref, img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", ref, d, o.out)
	return nil
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// layer returns an uncompressed tar holding the base directories, /etc/passwd and /etc/group, and the files.
func layer(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mkdir := func(d string, mode int64) error {
		var parts []string
		for p := d; p != "/" && p != "."; p = path.Dir(p) {
			parts = append([]string{p}, parts...)
		}
		for _, p := range parts {
			if dirs[p] {
				continue
			}
			dirs[p] = true
			m := int64(0o755)
			if p == d {
				m = mode
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p[1:] + "/", Mode: m}); err != nil {
				return err
			}
		}
		return nil
	}
	add := func(dst string, mode int64, size int64, r io.Reader) error {
		if err := mkdir(path.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst[1:], Mode: mode, Size: size}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	for _, d := range []struct {
		path string
		mode int64
	}{{"/home/nonroot", 0o755}, {"/run", 0o755}, {"/tmp", 0o1777}, {"/var/run", 0o755}} {
		if err := mkdir(d.path, d.mode); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct{ name, body string }{{"/etc/passwd", passwd}, {"/etc/group", group}} {
		if _, ok := files[f.name]; ok {
			continue
		}
		if err := add(f.name, 0o644, int64(len(f.body)), strings.NewReader(f.body)); err != nil {
			return nil, err
		}
	}
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, dst := range keys {
		if err := addFile(add, dst, files[dst]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(add func(string, int64, int64, io.Reader) error, dst, src string) error {
	f, err := os.Open(src) // follows symlinks: the image gets the real content
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory; map files one by one", src)
	}
	return add(dst, int64(st.Mode().Perm()), st.Size(), f)
}
