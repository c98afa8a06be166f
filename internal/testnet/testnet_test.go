package testnet

import "testing"

// TestFreeAddrsDistinct: one call never hands out a port twice.
func TestFreeAddrsDistinct(t *testing.T) {
	for range 50 {
		seen := map[string]bool{}
		for _, a := range FreeAddrs(t, 8) {
			if seen[a] {
				t.Fatalf("address %s handed out twice in one call", a)
			}
			seen[a] = true
		}
	}
}
