// Package web owns the coordinator's dashboard page: its sources (src/),
// the npm packages it is built with (package.json, package-lock.json) and
// the built bundle (dist/), which is committed and embedded so that
// `go build` alone makes the whole binary. `make web` rebuilds dist/.
package web

import (
	"embed"
	"io/fs"
)

//go:embed dist
var dist embed.FS

// Assets returns the built page: index.html and its assets.
func Assets() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // "dist" is embedded above; Sub cannot fail on it
	}
	return sub
}
