//go:build !amd64 || purego

package parallel

// Without assembly (other architectures, or -tags purego) the reductions
// are the pure-Go loops of comm_kernel.go.

func addTo(dst, src []float32) { addToGo(dst, src) }
func maxTo(dst, src []float32) { maxToGo(dst, src) }
func scale(x []float32, n int) { scaleGo(x, float32(n)) }
