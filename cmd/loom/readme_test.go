package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
)

// readmeCommands returns the `bin/loom ...` lines of the README's first
// sh block after the line containing after, comments cut.
func readmeCommands(t *testing.T, after string) []string {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	found, in := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !found:
			found = strings.Contains(line, after)
		case !in:
			in = strings.HasPrefix(line, "```sh")
		case strings.HasPrefix(line, "```"):
			return cmds
		case strings.HasPrefix(line, "bin/loom "):
			if i := strings.Index(line, "  #"); i >= 0 {
				line = line[:i]
			}
			cmds = append(cmds, strings.TrimSpace(line))
		}
	}
	t.Fatalf("README.md has no sh block after %q", after)
	return nil
}

// readmeWorld runs README command lines as processes of this test binary
// (TestMain makes it act as `loom`).
type readmeWorld struct {
	t     *testing.T
	subst *strings.Replacer
	ports map[string]string
	procs []*readmeProc
}

type readmeProc struct {
	line string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

// args turns a printed line into arguments: placeholders and the fixed
// ports replaced (other processes on this machine may hold 7070 or 2379).
func (w *readmeWorld) args(line, node string) []string {
	line = w.subst.Replace(strings.ReplaceAll(line, "NODE", node))
	line = regexp.MustCompile(`:(7070|7071|2379|9090|9091)\b`).ReplaceAllStringFunc(line, func(m string) string {
		return ":" + w.ports[m[1:]]
	})
	f := strings.Fields(line)
	if f[0] != "bin/loom" {
		w.t.Fatalf("not a loom command: %q", line)
	}
	return f[1:]
}

func (w *readmeWorld) start(line, node string) *readmeProc {
	w.t.Helper()
	args := w.args(line, node)
	p := &readmeProc{line: strings.Join(args, " "), out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	w.procs = append(w.procs, p)
	return p
}

// run runs a line to its end and returns its output.
func (w *readmeWorld) run(line, node string, timeout time.Duration) (string, error) {
	w.t.Helper()
	p := w.start(line, node)
	select {
	case err := <-p.done:
		p.done <- err
		return p.out.String(), err
	case <-time.After(timeout):
		w.t.Fatalf("loom %s: still running after %v; output:\n%s", p.line, timeout, p.out.String())
	}
	return "", nil
}

// stopAll sends SIGTERM to what still runs, newest first, and waits.
func (w *readmeWorld) stopAll() {
	for i := len(w.procs) - 1; i >= 0; i-- {
		p := w.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			p.done <- err
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			w.t.Errorf("loom %s did not stop on SIGTERM within 15s", p.line)
		}
	}
}

func (w *readmeWorld) dump() string {
	var b strings.Builder
	for _, p := range w.procs {
		fmt.Fprintf(&b, "--- loom %s\n%s\n", p.line, p.out.String())
	}
	return b.String()
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string, w *readmeWorld) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after 20s:\n%s", addr, w.dump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestREADMEMultiNode runs the README's multi-node commands as printed, on
// one machine: the coordinator on HOST = 127.0.0.1, a standby on 127.0.0.4,
// and workers on NODE = 127.0.0.2 and 127.0.0.3, which count as other
// hosts (each listens on 0.0.0.0 and advertises its own address). Only the
// placeholders (HOST, NODE, STANDBY, JOB, examples/default.yaml: a small
// dp=2 job) and the well-known ports (free ones instead) are replaced.
func TestREADMEMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and worker processes")
	}
	lines := readmeCommands(t, "Several machines")
	byCmd := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		byCmd[f[1]] = append(byCmd[f[1]], l)
	}
	if len(byCmd["coordinator"]) != 2 || len(byCmd["worker"]) != 1 || len(byCmd["submit"]) != 1 || len(byCmd["status"]) != 1 ||
		len(byCmd["top"]) != 1 || len(byCmd["stop"]) != 1 || len(byCmd) != 6 {
		t.Fatalf("README multi-node block changed shape (update this test): %q", lines)
	}
	spec, _ := fixture(t, "parallel: {dp: 2}\n")
	src, _ := os.ReadFile(spec)
	if err := os.WriteFile(spec, []byte(strings.Replace(string(src), "name: t\n", "name: readme\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ports := map[string]string{}
	for _, p := range []string{"7070", "7071", "2379", "9090", "9091"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, ports[p], _ = net.SplitHostPort(l.Addr().String())
		l.Close()
	}
	w := &readmeWorld{t: t, ports: ports, subst: strings.NewReplacer("STANDBY", "127.0.0.4", "HOST", "127.0.0.1",
		"examples/default.yaml", spec, " JOB ", " readme ")}
	defer w.stopAll()
	host := "127.0.0.1:" + ports["7070"]

	w.start(byCmd["coordinator"][0], "")
	waitListening(t, host, w)
	w.start(byCmd["coordinator"][1], "") // the standby, on etcd http://HOST:2379
	for _, node := range []string{"127.0.0.2", "127.0.0.3"} {
		w.start(byCmd["worker"][0], node)
	}
	out, err := w.run(byCmd["submit"][0], "", 2*time.Minute)
	if err != nil || !strings.Contains(out, "readme: SUCCEEDED") {
		t.Fatalf("submit: %v\n%s", err, w.dump())
	}
	status := byCmd["status"][0]
	if out, err = w.run(strings.Replace(status, " [JOB]", "", 1), "", 30*time.Second); err != nil ||
		!regexp.MustCompile(`readme\s+SUCCEEDED`).MatchString(out) {
		t.Errorf("status: %v\n%s", err, out)
	}
	if out, err = w.run(strings.Replace(status, "[JOB]", "readme", 1), "", 30*time.Second); err != nil ||
		!strings.Contains(out, "127.0.0.2:") || !strings.Contains(out, "127.0.0.3:") {
		t.Errorf("status readme: want ranks on 127.0.0.2 and 127.0.0.3: %v\n%s", err, out)
	}
	// top refreshes until interrupted: it must show the job's ranks.
	top := w.start(strings.Replace(byCmd["top"][0], "[JOB]", "readme", 1), "")
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(top.out.String(), "readme"); {
		if time.Now().After(deadline) {
			t.Errorf("top shows no job after 15s:\n%s", top.out.String())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = top.cmd.Process.Signal(syscall.SIGINT)
	if out, err = w.run(byCmd["stop"][0], "", 30*time.Second); err != nil || !strings.Contains(out, "readme already SUCCEEDED") {
		t.Errorf("stop: %v\n%s", err, out)
	}

	// What the README says the commands set up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://127.0.0.1:" + ports["2379"]; len(info.EtcdEndpoints) != 1 || info.EtcdEndpoints[0] != want {
		t.Errorf("workers are told etcd at %v, want %s", info.EtcdEndpoints, want)
	}
	// Both campaign; whichever won leads, the other stands by.
	got := append([]string(nil), info.Coordinators...)
	sort.Strings(got)
	if want := []string{host, "127.0.0.4:" + ports["7071"]}; fmt.Sprint(got) != fmt.Sprint(want) || info.LeaderAddr != info.Coordinators[0] {
		t.Errorf("coordinators %v (leader %s), want %v (the leader first, and the standby)", info.Coordinators, info.LeaderAddr, want)
	}
	for _, url := range []string{"http://127.0.0.1:" + ports["9090"] + "/metrics", "http://127.0.0.2:" + ports["9091"] + "/metrics"} {
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "loom_") {
			t.Errorf("GET %s: %s, %d bytes", url, resp.Status, len(b))
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("processes:\n%s", w.dump())
	}
}
