package gemm

import (
	"runtime"
	"sync"
	"time"
)

// MeasurePeak runs an independent-FMA loop of the best available kernel's
// width on threads goroutines (≤ 0 means runtime.NumCPU()) for about d and
// returns the achieved GFLOP/s: the practical float32 peak for MFU. Without
// an assembly kernel it returns 0.
func MeasurePeak(threads int, d time.Duration) float64 {
	return measurePeak(bestKernel(), threads, d)
}

// MeasurePeakPrecision is MeasurePeak for precision p: for BF16 the
// fastest of the TDPBF16PS loop (AMX, where available), the VDPBF16PS
// loop (each a 16-lane pair of multiply-adds) and the FMA loop (the
// bf16-fma kernels), the peak the bf16 MFU is measured against. Without an
// assembly loop it returns 0.
func MeasurePeakPrecision(p Precision, threads int, d time.Duration) float64 {
	if p == FP32 {
		return MeasurePeak(threads, d)
	}
	best := 0.0
	for _, f := range []string{"bf16-amx", "bf16-dp", "bf16-fma"} {
		if ks := familyOf(kernelsFor(p), f); len(ks) > 0 && ks[0].peak != nil {
			best = max(best, measurePeak(ks[0], threads, d))
		}
	}
	return best
}

func measurePeak(k kernel, threads int, d time.Duration) float64 {
	if k.peak == nil {
		return 0
	}
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	k.peak(1 << 16) // wake the vector units (clocks ramp on first use)
	const chunk = 1 << 20
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total float64
	)
	start := time.Now()
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var flops float64
			for time.Since(start) < d {
				flops += k.peak(chunk)
			}
			mu.Lock()
			total += flops
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total / time.Since(start).Seconds() / 1e9
}
