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

// MeasurePeakPrecision is MeasurePeak for the best kernel of precision p:
// for BF16 the VDPBF16PS loop (each a 16-lane pair of multiply-adds), the
// peak the bf16 MFU is measured against. Without such a loop it returns 0.
func MeasurePeakPrecision(p Precision, threads int, d time.Duration) float64 {
	ks := kernelsFor(p)
	if len(ks) == 0 {
		return 0
	}
	return measurePeak(ks[0], threads, d)
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
