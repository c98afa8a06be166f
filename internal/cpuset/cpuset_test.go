package cpuset

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestParseAndString(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Set
		str  string
	}{
		{"0", Set{0}, "0"},
		{"0-3,6", Set{0, 1, 2, 3, 6}, "0-3,6"},
		{" 6,0-1,1 ", Set{0, 1, 6}, "0-1,6"},
		{"2,4,6", Set{2, 4, 6}, "2,4,6"},
	} {
		got, err := Parse(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) || got.String() != c.str {
			t.Errorf("Parse(%q) = %v (%q), %v; want %v (%q)", c.in, got, got.String(), err, c.want, c.str)
		}
	}
	for _, bad := range []string{"", "a", "3-1", "1-", "-1", "0,,1"} {
		if s, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", bad, s)
		} else if !strings.Contains(err.Error(), "CPU list") && !strings.Contains(err.Error(), "range") {
			t.Errorf("Parse(%q): error %q does not say what a CPU list looks like", bad, err)
		}
	}
}

// smtTopology is 2 packages × 2 cores × 2 threads, numbered as Linux does
// on most x86 machines: the first thread of every core, then the second.
func smtTopology() []CPU {
	var cpus []CPU
	for id := 0; id < 8; id++ {
		core := id % 4
		cpus = append(cpus, CPU{ID: id, Package: core / 2, Core: core % 2})
	}
	return cpus
}

func TestSplitFillsCoresBeforeSiblings(t *testing.T) {
	cpus := smtTopology()
	for _, c := range []struct {
		workers, per int
		want         []Set
	}{
		{2, 1, []Set{{0}, {1}}},
		{2, 2, []Set{{0, 1}, {2, 3}}},
		{4, 1, []Set{{0}, {1}, {2}, {3}}},
		{4, 2, []Set{{0, 1}, {2, 3}, {4, 5}, {6, 7}}},
		{8, 1, []Set{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}},
	} {
		got, ok := Split(cpus, c.workers, c.per)
		if !ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Split(%d workers × %d) = %v, %v; want %v", c.workers, c.per, got, ok, c.want)
		}
	}
	// Siblings numbered next to each other (0,1 share a core): the first
	// two workers still get different cores.
	var adj []CPU
	for id := 0; id < 4; id++ {
		adj = append(adj, CPU{ID: id, Package: 0, Core: id / 2})
	}
	if got, ok := Split(adj, 2, 1); !ok || !reflect.DeepEqual(got, []Set{{0}, {2}}) {
		t.Errorf("Split with adjacent siblings = %v, %v; want [[0] [2]]", got, ok)
	}
	if got, ok := Split(cpus, 3, 3); ok {
		t.Errorf("Split(3 × 3 of 8 CPUs) = %v, true; want false", got)
	}
}

func TestTopologyFromSysfs(t *testing.T) {
	root := t.TempDir()
	for id, pc := range [][2]int{{0, 0}, {0, 0}, {0, 1}} {
		dir := filepath.Join(root, "devices", "system", "cpu", "cpu"+strconv.Itoa(id), "topology")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "physical_package_id"), []byte(strconv.Itoa(pc[0])+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "core_id"), []byte(strconv.Itoa(pc[1])+"\n"), 0o644)
	}
	got := Topology(root, Set{0, 1, 2, 3})
	want := []CPU{{0, 0, 0}, {1, 0, 0}, {2, 0, 1}, {3, -1, -4}} // cpu3 has no files: a core of its own
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Topology = %v, want %v", got, want)
	}
	if sets, ok := Split(got, 3, 1); !ok || !reflect.DeepEqual(sets, []Set{{0}, {2}, {3}}) {
		t.Errorf("Split of that topology = %v, %v; want [[0] [2] [3]]", sets, ok)
	}
}
