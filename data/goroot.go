package data

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// GoSourceInputs returns the default corpus of `make run`: the inputs and
// include globs that select every *.go file of the Go standard library
// sources, $(go env GOROOT)/src. It asks the go command, falling back to
// the GOROOT this binary was built with.
func GoSourceInputs(ctx context.Context) (inputs, include []string, err error) {
	root := ""
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(cctx, "go", "env", "GOROOT").Output(); err == nil {
		root = strings.TrimSpace(string(out))
	}
	if root == "" {
		root = runtime.GOROOT() //nolint:staticcheck // fallback when the go command is absent
	}
	src := filepath.Join(root, "src")
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		return nil, nil, fmt.Errorf("data: Go sources not found at %s (install Go or set GOROOT, or give `loom prep` another corpus)", src)
	}
	return []string{src}, []string{"*.go"}, nil
}
