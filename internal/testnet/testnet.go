// Package testnet hands tests loopback addresses for the processes they start.
package testnet

import (
	"net"
	"testing"
)

// FreeAddrs returns n loopback addresses ("127.0.0.1:PORT") with distinct
// ports that were free a moment ago. Every listener stays open until all
// n ports are taken, so the n differ; separate calls may get one port
// twice once the first listener has closed (CI saw two workers handed one
// --http port). Take every address a test's processes will bind in one
// call, before starting any of them.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}
