package fast

// SetRegTiledAttention turns the register-tiled attention forward on or
// off for k (benchmarks in package fast_test compare it with the tile path).
func SetRegTiledAttention(k *Kernels, on bool) { k.regTiledAttention = on }
