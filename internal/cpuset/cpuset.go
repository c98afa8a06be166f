// Package cpuset owns CPU affinity: CPU lists ("0-3,6"), the CPUs this
// process may run on, their split into disjoint sets for the local workers
// of a launch (one physical core each before any SMT sibling), and binding
// every thread of a process to a set.
package cpuset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrUnsupported is returned by Allowed and Bind where the operating
// system gives no thread affinity to set (everywhere but Linux).
var ErrUnsupported = errors.New("cpuset: CPU affinity is not supported on this operating system")

// Set is a sorted list of distinct CPU numbers.
type Set []int

// Parse reads a CPU list as Linux writes it (cpuset(7)): comma-separated
// numbers and inclusive ranges, e.g. "0-3,6". The empty string is an error.
func Parse(s string) (Set, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("cpuset: empty CPU list (want e.g. 0-3,6)")
	}
	var out Set
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpuset: %q in CPU list %q is not a CPU number or range (want e.g. 0-3,6)", part, s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpuset: %q in CPU list %q is not a range low-high with low ≤ high", part, s)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// String writes s as a CPU list with ranges ("0-3,6"); "" when s is empty.
func (s Set) String() string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// CPU is one logical CPU's place in the machine: its package and core
// (logical CPUs with the same pair are SMT siblings).
type CPU struct {
	ID, Package, Core int
}

// Topology reads the package and core of each CPU in cpus from
// sysfsRoot/devices/system/cpu/cpuN/topology (sysfsRoot is "/sys" on a
// live system). A CPU whose files are missing or unreadable counts as a
// core of its own, which is what a virtual machine without topology looks
// like anyway.
func Topology(sysfsRoot string, cpus Set) []CPU {
	out := make([]CPU, len(cpus))
	for i, c := range cpus {
		dir := filepath.Join(sysfsRoot, "devices", "system", "cpu", "cpu"+strconv.Itoa(c), "topology")
		pkg, perr := readInt(filepath.Join(dir, "physical_package_id"))
		core, cerr := readInt(filepath.Join(dir, "core_id"))
		if perr != nil || cerr != nil {
			pkg, core = -1, -1-c // unique: a core of its own
		}
		out[i] = CPU{ID: c, Package: pkg, Core: core}
	}
	return out
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Split gives each of workers a disjoint set of per CPUs out of cpus,
// filling physical cores first: the CPUs are ordered by their SMT sibling
// index (first thread of every core, then the second, ...), then by their
// core's lowest CPU number, and dealt out in that order, so that no two
// workers share a core while there are cores enough (DeepSpeed's
// --bind_cores_to_rank, and what OMP_PROC_BIND=spread does for threads). It returns false, and no
// sets, when workers × per exceeds the CPUs.
func Split(cpus []CPU, workers, per int) ([]Set, bool) {
	if workers < 1 || per < 1 || workers*per > len(cpus) {
		return nil, false
	}
	type key struct{ pkg, core int }
	sibling := make(map[key]int) // threads of each core seen so far
	first := make(map[key]int)   // each core's lowest CPU number
	type ranked struct {
		id, sib, core int
	}
	sorted := slices.Clone(cpus)
	slices.SortFunc(sorted, func(a, b CPU) int { return a.ID - b.ID })
	order := make([]ranked, len(sorted))
	for i, c := range sorted {
		k := key{c.Package, c.Core}
		if sibling[k] == 0 {
			first[k] = c.ID
		}
		order[i] = ranked{id: c.ID, sib: sibling[k], core: first[k]}
		sibling[k]++
	}
	slices.SortStableFunc(order, func(a, b ranked) int {
		if a.sib != b.sib {
			return a.sib - b.sib
		}
		return a.core - b.core
	})
	sets := make([]Set, workers)
	for w := range sets {
		for _, c := range order[w*per : (w+1)*per] {
			sets[w] = append(sets[w], c.id)
		}
		slices.Sort(sets[w])
	}
	return sets, true
}
