// Command gen writes Loom's Grafana dashboard, Prometheus rules and scrape
// config (package grafana) into a directory: `make grafana` runs it for
// deploy/grafana. Usage: go run ./deploy/grafana/gen [DIR]
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/loomtrain/loom/deploy/grafana"
)

func main() {
	dir := "deploy/grafana"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	files, err := grafana.Files()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, files[n], 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		fmt.Println("wrote", p)
	}
}
