package parallel

import (
	"os"
	"strconv"
	"strings"
)

// A tcp link between two processes of one host carries its bytes through
// the kernel's loopback: the sender copies them into socket buffers and the
// receiver copies them out, and Linux's autotuning lets up to tcp_rmem's
// maximum (32 MiB here) wait between the two. Capped so that what is in
// flight fits the core's L2 cache (the kernel doubles the value set, so
// half of L2), the receiver's copy reads bytes the sender's just wrote
// while they are still cached (a hypothesis that fits the figures: a
// quarter of L2 measured level with autotuning, the whole of it worse).
// Measured on a 2-vCPU Xeon VM (L2 2 MiB), 4 alternating rounds against
// autotuning: tcp all-reduce busbw at 4, 16 and 64 MiB higher in 3 of 4
// rounds at 4 ranks (+2–27%) and at 16–64 MiB in 7 of 8 at 2 ranks
// (+4–16%); 1 MiB at 2 ranks and the small sizes level; 4 MiB at 2 ranks
// 2–7% slower (4 of 4 rounds; perhaps because autotuning lets the whole
// message wait in the buffers at once, not measured).
// Links to other hosts keep autotuning: their window must cover the
// path's bandwidth × delay.

// SameHostSocketBuffer is the socket buffer size (SO_SNDBUF and SO_RCVBUF,
// bytes) the tcp transport sets on links between two processes of one
// host: half of the L2 cache (sysfs), or 0 (autotuning) when unknown.
// `loom bench wire --window -1` gives its plain sockets the same.
func SameHostSocketBuffer() int {
	for i := range 8 {
		dir := "/sys/devices/system/cpu/cpu0/cache/index" + strconv.Itoa(i) + "/"
		level, err := os.ReadFile(dir + "level")
		if err != nil {
			break
		}
		typ, _ := os.ReadFile(dir + "type")
		if strings.TrimSpace(string(level)) != "2" || strings.TrimSpace(string(typ)) == "Instruction" {
			continue
		}
		size, _ := os.ReadFile(dir + "size")
		s := strings.TrimSpace(string(size))
		mult := 1
		if k, ok := strings.CutSuffix(s, "K"); ok {
			mult, s = 1<<10, k
		} else if m, ok := strings.CutSuffix(s, "M"); ok {
			mult, s = 1<<20, m
		}
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			return n * mult / 2
		}
	}
	return 0
}
