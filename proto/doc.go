// Package proto owns Loom's wire definitions: the .proto files under
// loom/v1, the Go code generated from them (package loomv1) and gen.sh,
// which regenerates that code. gen_test.go fails when the committed code is
// stale.
package proto
