// Command gen writes deploy/k8s's generated files (package k8s,
// Generated); run it from the repository root (`make k8s`).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/loomtrain/loom/deploy/k8s"
)

func main() {
	files, err := k8s.Generated("deploy/grafana")
	if err == nil {
		for name, b := range files {
			if err = os.WriteFile(filepath.Join("deploy/k8s", name), b, 0o644); err != nil {
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s gen:", err)
		os.Exit(1)
	}
}
