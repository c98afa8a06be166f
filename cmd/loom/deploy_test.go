package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// flagsOf returns the flags `loom CMD --help` lists.
func flagsOf(t *testing.T, cmd string) map[string]bool {
	t.Helper()
	_, stderr, _ := loom(t, cmd, "--help")
	got := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(stderr, -1) {
		got[m[1]] = true
	}
	if len(got) == 0 {
		t.Fatalf("loom %s --help listed no flags:\n%s", cmd, stderr)
	}
	return got
}

// checkArgs checks that every --flag of a loom command line is one the
// command has.
func checkArgs(t *testing.T, where string, args []string, known map[string]map[string]bool) {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: no loom command", where)
		return
	}
	cmd := args[0]
	if known[cmd] == nil {
		known[cmd] = flagsOf(t, cmd)
	}
	for _, a := range args[1:] {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if !known[cmd][name] {
			t.Errorf("%s: `loom %s` has no flag --%s", where, cmd, name)
		}
	}
}

// The systemd units and Kubernetes manifests pass only flags loom has.
func TestDeployFlagsExist(t *testing.T) {
	known := map[string]map[string]bool{}
	units, _ := filepath.Glob("../../deploy/systemd/*.service")
	if len(units) != 3 {
		t.Fatalf("%d systemd units; want 3", len(units))
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "\\\n", " ")
		m := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/loom (.*)$`).FindStringSubmatch(text)
		if m == nil {
			t.Errorf("%s: no ExecStart of /usr/local/bin/loom", u)
			continue
		}
		checkArgs(t, u, strings.Fields(m[1]), known)
	}
	files, _ := filepath.Glob("../../deploy/k8s/base/*.yaml")
	n := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		d := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var obj struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Image string   `yaml:"image"`
								Args  []string `yaml:"args"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			}
			if err := d.Decode(&obj); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, c := range obj.Spec.Template.Spec.Containers {
				if c.Image == "loom" {
					checkArgs(t, f, c.Args, known)
					n++
				}
			}
		}
	}
	if n != 3 {
		t.Errorf("%d loom containers in deploy/k8s/base; want 3 (coordinator, worker, submit)", n)
	}
}
