package gemm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cacheSizes are per-core data cache sizes in bytes (L3 is the whole shared
// cache).
type cacheSizes struct{ l1, l2, l3 int }

// Defaults when sysfs is unavailable: a common x86 server core.
var defaultCaches = cacheSizes{l1: 32 << 10, l2: 512 << 10, l3: 8 << 20}

// readCacheSizes reads cpu0's data/unified cache sizes from sysfs
// (golang.org/x/sys/cpu does not report them), falling back to defaults.
func readCacheSizes() cacheSizes {
	cs := defaultCaches
	dirs, _ := filepath.Glob("/sys/devices/system/cpu/cpu0/cache/index*")
	for _, d := range dirs {
		typ := readTrim(filepath.Join(d, "type"))
		if typ != "Data" && typ != "Unified" {
			continue
		}
		level, err1 := strconv.Atoi(readTrim(filepath.Join(d, "level")))
		size, err2 := parseSize(readTrim(filepath.Join(d, "size")))
		if err1 != nil || err2 != nil || size <= 0 {
			continue
		}
		switch level {
		case 1:
			cs.l1 = size
		case 2:
			cs.l2 = size
		case 3:
			cs.l3 = size
		}
	}
	return cs
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// parseSize parses sysfs sizes such as "32K", "1024K" or "32M".
func parseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	}
	v, err := strconv.Atoi(s)
	return v * mult, err
}

// blockSizes are the BLIS cache blocks: a KC×NR micro-panel of B lives in
// L1, an MC×KC block of A in L2 and a KC×NC block of B in L3.
//
// cmax caps the C block one NC pass updates (M×NC floats, 0 = no cap) at
// half of a worker's share of L3: with K > KC every K slice re-reads and
// re-writes that block, and when it stays in L3 those passes do not go to
// DRAM (run lowers NC to fit).
//
// cblock, when > 0, lets a call whose K takes several slices run them
// innermost (worker.runKInner, AMX only): each MC×NC block of C then takes
// all of its K slices while it holds at most cblock floats (half of L2),
// B being packed whole for the NC block first. AMX computes a slice so
// fast that the M×NC block of C streaming to L3 and back between slices
// bounded it otherwise.
type blockSizes struct{ mc, kc, nc, cmax, cblock int }

// chooseBlocks derives the blocking from the cache sizes:
//   - KC: the B micro-panel (KC·NR floats, or KC/2·NR bf16 pair words)
//     takes half of L1, leaving room for the A micro-panel and C tile.
//     32 KiB L1, NR=16 → 256; 48 KiB, NR=32 → 192; bf16 pairs take half
//     the bytes, so KC doubles: 32 KiB, NR=32 → 256 (Zen 4, one thread,
//     the `small` step's GEMMs with tuning off: 128 → 256 took nn
//     2048×512×1376 from 129 to 151 GFLOP/s and nt 2048×4096×512 from
//     143 to 170; 384 and 512 measured within the noise of 256).
//   - MC: the A block (MC·KC floats, or bf16 halves) takes a quarter of
//     L2, rounded down to MR, leaving L2 room for the B micro-panels
//     streaming through and the C tiles. 512 KiB, KC=256, MR=6 → 126; 1 MiB, KC=192, MR=14 → 336.
//     (Measured on Zen 3, 4096×768×3072: MC 126 ≈ 78 GFLOP/s, 252 ≈ 74.)
//   - NC: each worker's B block (KC·NC floats) takes at most a quarter of
//     its share of L3, capped at 4096 columns, rounded down to NR.
//   - cmax: half of each worker's share of L3, in floats (see blockSizes).
func chooseBlocks(cs cacheSizes, k kernel, threads int) blockSizes {
	f := 4         // bytes per k-step element: a float32, or half a bf16 pair word
	if k.pairs() { // AMX too: 48 KiB L1 → KC 384, MC 672 (see docs/kernels.md)
		f = 2
	}
	kc := cs.l1 / 2 / (k.nr * f)
	kc = clampInt(kc&^7, 64, 512*4/f)
	kc -= kc % k.kcStep()
	mc := cs.l2 / 4 / (kc * f)
	mc = max(mc/k.mr*k.mr, k.mr)
	nc := cs.l3 / max(threads, 1) / 4 / (kc * f)
	nc = clampInt(nc/k.nr*k.nr, 4*k.nr, 4096/k.nr*k.nr)
	cmax := cs.l3 / max(threads, 1) / 2 / 4
	b := blockSizes{mc: mc, kc: kc, nc: nc, cmax: cmax}
	if k.amx {
		b.cblock = cs.l2 / 2 / 4
	}
	return b
}

func clampInt(v, lo, hi int) int { return max(lo, min(v, hi)) }
