package fast

// SetAttentionKernel forces k's attention forward onto the register-tiled
// kernel (regTiled, where it applies) or the tile path (benchmarks in
// package fast_test compare them).
func SetAttentionKernel(k *Kernels, regTiled bool) {
	k.attnMode = attnTile
	if regTiled {
		k.attnMode = attnRegTiled
	}
}
