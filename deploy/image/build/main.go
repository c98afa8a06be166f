// Command build writes Loom's OCI image (package image) as an OCI layout
// directory and a tarball that `podman load` and `docker load` take:
//
//	CGO_ENABLED=0 go build -o out/image/loom ./cmd/loom
//	go run ./deploy/image/build -binary out/image/loom -version 0.1.0 \
//	    -layout out/image/oci -tarball out/image/loom.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/loomtrain/loom/deploy/image"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	var o image.Options
	flag.StringVar(&o.Binary, "binary", "", "the static loom `BINARY` (CGO_ENABLED=0)")
	flag.StringVar(&o.Version, "version", "", "the image's version label (and tag)")
	flag.StringVar(&o.Revision, "revision", "", "the git commit, for the revision label")
	flag.StringVar(&o.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to include (empty: none)")
	dir := flag.String("layout", "", "write an OCI image layout to `DIR`")
	tar := flag.String("tarball", "", "write a docker/podman-loadable tarball to `FILE`")
	repo := flag.String("repo", "loom", "the image `REPOSITORY` the tarball's tag names")
	flag.Parse()
	if *dir == "" && *tar == "" {
		return fmt.Errorf("give -layout DIR, -tarball FILE or both")
	}
	if o.CABundle != "" {
		if _, err := os.Stat(o.CABundle); err != nil {
			return fmt.Errorf("-ca-bundle: %w (pass -ca-bundle '' to leave it out)", err)
		}
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		o.Created = time.Unix(sec, 0).UTC()
	}
	img, err := image.Build(o)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(*repo + ":" + o.Version)
	if err != nil {
		return fmt.Errorf("-repo/-version: %w", err)
	}
	if *dir != "" {
		if err := os.RemoveAll(*dir); err != nil {
			return err
		}
		p, err := layout.Write(*dir, empty.Index)
		if err != nil {
			return fmt.Errorf("-layout %s: %w", *dir, err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag.String()})); err != nil {
			return fmt.Errorf("-layout %s: %w", *dir, err)
		}
	}
	if *tar != "" {
		if err := tarball.WriteToFile(*tar, tag, img); err != nil {
			return fmt.Errorf("-tarball %s: %w", *tar, err)
		}
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	size, err := image.CompressedSize(img)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s: %.1f MiB compressed (one layer), digest %s\n", tag, o.Binary, float64(size)/(1<<20), digest)
	return nil
}
