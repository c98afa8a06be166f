package parallel

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/internal/security"
)

// peerTLS returns the data-plane TLS configuration of component comp of a
// fresh development CA in dir (made once per dir).
func peerTLS(t *testing.T, dir, comp string) *tls.Config {
	t.Helper()
	if err := security.InitDir(dir, security.DefaultComponents(), security.CertOptions{}, false); err != nil && !strings.Contains(err.Error(), "already holds a CA") {
		t.Fatal(err)
	}
	s, err := security.New(security.Config{Dir: filepath.Join(dir, comp)}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return s.PeerTLS()
}

// With TLS, collectives run on every transport (the tcp bulk link inside
// TLS too) and give the same sums.
func TestTLSCollectives(t *testing.T) {
	conf := peerTLS(t, t.TempDir(), "worker")
	for _, m := range []TransportMode{ModeGRPC, ModeTCP} {
		c := newCluster(t, 2, TransportOptions{Mode: m, TLS: conf})
		gs := c.groups(t, GroupSpec{Job: "j", Name: "g", Ranks: seq(2), Timeout: 10 * time.Second})
		ctx := testCtx(t, 20*time.Second)
		bufs := [][]float32{make([]float32, 300_000), make([]float32, 300_000)}
		for r := range bufs {
			for i := range bufs[r] {
				bufs[r][i] = float32(r + 1)
			}
		}
		noErrors(t, m.String()+" all-reduce", each(2, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
		for r := range bufs {
			if bufs[r][0] != 3 || bufs[r][len(bufs[r])-1] != 3 {
				t.Errorf("%v: rank %d: sum %v…%v, want 3", m, r, bufs[r][0], bufs[r][len(bufs[r])-1])
			}
		}
		// Small frames: header and payload joined in one TLS record.
		for _, n := range []int{1, 1000, tlsJoinBytes / 4, tlsJoinBytes/4 + 1} {
			small := [][]float32{make([]float32, n), make([]float32, n)}
			for r := range small {
				for i := range small[r] {
					small[r][i] = float32(r+1) * float32(i%5)
				}
			}
			noErrors(t, fmt.Sprintf("%v all-reduce of %d", m, n), each(2, func(i int) error { return gs[i].AllReduce(ctx, small[i], Sum) }))
			for r := range small {
				for i, v := range small[r] {
					if v != 3*float32(i%5) {
						t.Fatalf("%v: %d floats: rank %d [%d] = %v, want %v", m, n, r, i, v, 3*float32(i%5))
					}
				}
			}
		}
	}
}

// A raw bulk connection that skips TLS (preamble, then the secret in the
// clear) is refused: the bulk channel only speaks inside TLS.
func TestTLSRefusesPlainBulk(t *testing.T) {
	conf := peerTLS(t, t.TempDir(), "worker")
	c := newCluster(t, 2, TransportOptions{Mode: ModeTCP, TLS: conf})
	conn, err := net.Dial("tcp", c.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var s secret
	conn.Write(append(tcpPreamble[:], s[:]...))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	n, err := conn.Read(b[:])
	// The server answers a non-TLS hello with an alert (or closes), never
	// with the bulk acknowledgement.
	if err == nil && n == 1 && b[0] == bulkAck {
		t.Fatal("a plaintext bulk connection was acknowledged")
	}
}

// A peer without a certificate of the CA, or one whose certificate is not
// a worker's, cannot join: the group fails naming the peer, it does not hang.
func TestTLSRefusesStrangers(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	good := peerTLS(t, dir, "worker")
	for name, bad := range map[string]*tls.Config{
		"plaintext":  nil,
		"another CA": peerTLS(t, other, "worker"),
		"admin role": peerTLS(t, dir, "admin"),
	} {
		ts := make([]*Transport, 2)
		addrs := map[int]string{}
		for r, conf := range []*tls.Config{good, bad} {
			tr, err := NewTransport(t.Context(), TransportOptions{ListenAddr: "127.0.0.1:0", Mode: ModeTCP, TLS: conf})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			ts[r], addrs[r] = tr, tr.Addr()
		}
		gs := make([]*Group, 2)
		for r := range 2 {
			g, err := ts[r].NewGroup(GroupSpec{Job: "j", Name: "g", Ranks: seq(2), MyRank: r, Addrs: addrs, Timeout: 3 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			gs[r] = g
		}
		ctx := testCtx(t, 20*time.Second)
		errs := each(2, func(i int) error { return gs[i].AllReduce(ctx, []float32{1}, Sum) })
		var pe *PeerError
		if !errors.As(errs[0], &pe) || pe.Rank != 1 {
			t.Errorf("%s: the good rank got %v, want a PeerError naming rank 1", name, errs[0])
		}
	}
}
