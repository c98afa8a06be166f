#!/usr/bin/python3
"""`make bench`: Loom against the anchors of ../shared/bench, side by side.

Runs, back to back in this one script, each Loom benchmark and the matching
reference, and prints their ratio:
  - SGEMM GFLOP/s: `loom bench gemm` vs OpenBLAS in the same transpose case
    (scripts/sgemm_openblas_trans.c; ../shared/bench/sgemm_openblas.c's nn for the core check,
    OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset so OpenBLAS picks its best kernel, or
    OPENBLAS_CORETYPE=SkylakeX where its detection misses an AVX-512 CPU: anchors());
  - training tokens/s: `loom bench step` vs the same LLaMA in PyTorch
    (llama_torch.py, OMP_WAIT_POLICY=PASSIVE, its best setting on 2 cores);
  - all-reduce latency and bus bandwidth, 2 and 4 ranks, 4 KiB .. 256 MiB: `loom bench
    allreduce --transport shm|tcp|grpc` vs Gloo (scripts/gloo_allreduce.py, the anchor
    generalized to N ranks), OpenMPI over TCP and over shared memory, beside the wire's own
    limit (`loom bench wire`: a plain socket, both ways at once).
The hardware limit is the FMA peak `loom bench gemm --peak` measures.
Needs Debian's python3-torch and libopenblas-dev (../shared/bench/install.sh);
a missing anchor is reported and skipped. Usage: scripts/bench.py [gemm] [step] [comm] [dp]
(dp: data-parallel scaling of examples/default.yaml, dp 2 vs dp 1; needs `make out/gosrc-bpe.bin out/pydoc-bpe.bin`)
"""
import functools, json, os, re, shutil, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOM = os.path.join(ROOT, "bin", "loom")
# ../shared/bench beside the checkout (or two levels up, from a worktree); LOOM_ANCHORS overrides.
ANCHORS = os.environ.get("LOOM_ANCHORS") or next(
    (d for d in (os.path.normpath(os.path.join(ROOT, *up, "shared", "bench")) for up in (("..",), ("..", ".."))) if os.path.isdir(d)),
    os.path.normpath(os.path.join(ROOT, "..", "shared", "bench")))
CLEAN = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(exe):
    """The core OpenBLAS picks on this CPU (OPENBLAS_VERBOSE=2 prints it)."""
    out = subprocess.run([exe, "1"], env=dict(CLEAN, OPENBLAS_VERBOSE="2", SHAPES="64x64x64"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    m = re.search(r"^Core: (\S+)", out, re.M)
    return m.group(1) if m else "?"


def anchors(exe):
    """Sets CLEAN so that OpenBLAS (and PyTorch, which Debian links to it) runs
    its best kernel. OpenBLAS 0.3.21 detects the CPU by family and model and
    falls back to Prescott (SSE3, a sixth of the AVX-512 rate) on a model it
    does not know, e.g. an Emerald Rapids Xeon (model 207) under KVM: there
    its AVX-512 kernel is chosen by name (SkylakeX), the fair anchor."""
    core = openblas_core(exe)
    if core not in ("SkylakeX", "Cooperlake", "SapphireRapids") and "avx512f" in cpu_flags():
        CLEAN["OPENBLAS_CORETYPE"] = "SkylakeX"
        core = f"SkylakeX (auto-detection chose {core} on this CPU; forced by OPENBLAS_CORETYPE)"
    print(f"OpenBLAS kernel: {core}")


@functools.cache
def openblas_exe():
    """The OpenBLAS SGEMM anchor, compiled once (None without libopenblas-dev)."""
    src = os.path.join(ANCHORS, "sgemm_openblas.c")
    if not os.path.exists("/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h"):
        return None
    exe = "/tmp/loom-sgemm-openblas"
    run(["gcc", "-O2", src, "-o", exe, "-I/usr/include/x86_64-linux-gnu/openblas-pthread", "-lopenblas"])
    return exe


@functools.cache
def openblas_trans_exe():
    """scripts/sgemm_openblas_trans.c: OpenBLAS in each transpose case, compiled once."""
    exe = "/tmp/loom-sgemm-openblas-trans"
    run(["gcc", "-O2", os.path.join(ROOT, "scripts", "sgemm_openblas_trans.c"), "-o", exe,
         "-I/usr/include/x86_64-linux-gnu/openblas-pthread", "-lopenblas"])
    return exe


def run(cmd, env=None):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def jsonl(out):
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def gemm():
    print("## SGEMM GFLOP/s (median): Loom vs OpenBLAS, same shapes, back to back")
    peak = [r for r in jsonl(run([LOOM, "bench", "gemm", "--m", "64", "--n", "64", "--k", "64", "--threads", "1,2", "--peak", "--log-format", "json"])) if "peak_gflops" in r]
    for r in peak:
        print(f"FMA peak, {r.get('threads')} thread(s): {r['peak_gflops']:.0f} GFLOP/s")
    exe = openblas_exe()
    if exe is None:
        print("OpenBLAS anchor skipped: install libopenblas-dev (../shared/bench/install.sh)")
        return
    # make bench's transformer shapes, plus d=640 / ffn=1728 at 3072 tokens
    # (where the derived blocking was 0.54-0.90x OpenBLAS on a Xeon).
    shapes = [(4096, 768, 768), (4096, 3072, 768), (4096, 768, 3072), (2048, 1376, 512), (2048, 512, 1376),
              (3072, 640, 640), (3072, 1728, 640), (3072, 640, 1728)]
    # Tune every shape once first (cached under $XDG_CACHE_HOME/loom/gemm),
    # so the timed rounds below run the tuned plans and report them.
    for m, n, k in shapes:
        for th in (1, 2):
            run([LOOM, "bench", "gemm", "--m", str(m), "--n", str(n), "--k", str(k), "--threads", str(th),
                 "--trans", "nn,tn,nt", "--tune", "--iters", "1", "--log-format", "json"])
    # The machine is shared and noisy in bursts of seconds: every round runs
    # each shape and transpose case once (OpenBLAS in the same case, then
    # Loom), and medians over rounds are kept. The ratio is against OpenBLAS
    # in the same transpose case (scripts/sgemm_openblas_trans.c); earlier
    # stops compared every case with OpenBLAS's nn, so "nn ref" is printed too.
    trans_exe = openblas_trans_exe()
    rounds = 5
    med = lambda xs: sorted(xs)[len(xs) // 2]
    refs, looms, plans = {}, {}, {}
    for _ in range(rounds):
        for m, n, k in shapes:
            for th in (1, 2):
                for tr in ("nn", "tn", "nt"):
                    ob = jsonl(run([trans_exe, str(th), str(m), str(n), str(k), tr], env=CLEAN))
                    refs.setdefault((m, n, k, th, tr), []).append(ob[0]["gflops"] if ob else float("nan"))
                for r in jsonl(run([LOOM, "bench", "gemm", "--m", str(m), "--n", str(n), "--k", str(k), "--threads", str(th),
                                    "--trans", "nn,tn,nt", "--log-format", "json"])):
                    looms.setdefault((m, n, k, th, r["trans"]), []).append(r["gflops"])
                    plans[(m, n, k, th, r["trans"])] = f'{r["kernel"]} MC={r["mc"]} KC={r["kc"]} NC={r["nc"]} {r["grid"]}'
    print(f"(median of {rounds} rounds; each round runs every shape, OpenBLAS then Loom; ratio: Loom ÷ OpenBLAS in the same transpose case)")
    print(f"{'M×N×K':>16} {'thr':>3} {'trans':>5} {'Loom':>7} {'OpenBLAS':>8} {'ratio':>6} {'nn ref':>6}  plan")
    for m, n, k in shapes:
        for th in (1, 2):
            nn = med(refs[(m, n, k, th, "nn")])
            for tr in ("nn", "tn", "nt"):
                g, ref = med(looms[(m, n, k, th, tr)]), med(refs[(m, n, k, th, tr)])
                print(f"{m:>5}×{n}×{k:<5} {th:>3} {tr:>5} {g:7.1f} {ref:8.1f} {g/ref:6.2f} {g/nn:6.2f}  {plans[(m, n, k, th, tr)]}")


def step(rounds=3):
    print("## Training tokens/s (median step): Loom vs PyTorch 1.13, same config and threads, back to back")
    torch_ok = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode == 0
    med = lambda xs: sorted(xs)[len(xs) // 2]
    loom, ref, bf16 = {}, {}, {}
    for _ in range(rounds):  # each round runs every config once; medians over rounds
        for cfg, steps in (("tiny", 20), ("small", 4)):
            for th in (1, 2):
                r = jsonl(run([LOOM, "bench", "step", os.path.join(ROOT, "examples", cfg + ".yaml"), "--threads", str(th),
                               "--steps", str(steps), "--log-format", "json"]))[0]
                loom.setdefault((cfg, th), []).append(r)
                # bf16 GEMMs, back to back with fp32 (MFU against the bf16 peak measured in this run)
                r = jsonl(run([LOOM, "bench", "step", os.path.join(ROOT, "examples", cfg + ".yaml"), "--threads", str(th),
                               "--steps", str(steps), "--precision", "bf16", "--log-format", "json"]))[0]
                bf16.setdefault((cfg, th), []).append(r)
                if torch_ok:
                    env = dict(CLEAN, OMP_WAIT_POLICY="PASSIVE")
                    t = jsonl(run(["/usr/bin/python3", os.path.join(ANCHORS, "llama_torch.py"), "--config", cfg, "--threads", str(th),
                                   "--steps", str(steps)], env=env))[-1]
                    ref.setdefault((cfg, th), []).append(t["tok_s_median"])
    print(f"(median of {rounds} rounds; each round runs every config, Loom then PyTorch)")
    # CPU: the process's CPU time per step over threads × the step: well under
    # 100% means the threads waited for cores (a loaded machine), not for work.
    print(f"{'config':>6} {'thr':>3} {'Loom':>8} {'PyTorch':>8} {'ratio':>6} {'Loom MFU':>8} {'CPU':>5}")
    for (cfg, th), rs in loom.items():
        tok = med([r["tokens_per_sec"] for r in rs])
        mfu = med([r["mfu"] for r in rs])
        busy = med([r.get("step_cpu_s_p50", float("nan")) / (r["step_s_p50"] * th) for r in rs])
        rt = med(ref[(cfg, th)]) if (cfg, th) in ref else float("nan")
        print(f"{cfg:>6} {th:>3} {tok:8.0f} {rt:8.0f} {tok/rt:6.2f} {100*mfu:7.1f}% {100*busy:4.0f}%  ({rs[-1]['kernel']})")
    print("bf16 GEMMs (train.precision: bf16) vs Loom fp32, same rounds:")
    print(f"{'config':>6} {'thr':>3} {'bf16':>8} {'fp32':>8} {'ratio':>6} {'bf16 MFU':>8} {'bf16 peak':>9}  kernel")
    for (cfg, th), rs in bf16.items():
        tok = med([r["tokens_per_sec"] for r in rs])
        f32 = med([r["tokens_per_sec"] for r in loom[(cfg, th)]])
        mfu = med([r["mfu"] for r in rs])
        pk = med([r["peak_tflops"] for r in rs]) * 1e3
        print(f"{cfg:>6} {th:>3} {tok:8.0f} {f32:8.0f} {tok/f32:6.2f} {100*mfu:7.1f}% {pk:7.0f} GF  {rs[-1]['kernel']}")


def tcp_verdict(b, bw):
    """Issue 14's tcp target at one size from 1 MiB: busbw >= MPI-tcp's, and >= 1.5x Gloo's or, where
    1.5x Gloo is above what the wire carries, >= 0.9 of the wire. Gloo is compared with Loom's slowest
    rank (as gloo_allreduce.py times), the others with rank 0 (as they time themselves)."""
    if b < 1 << 20:
        return ""
    tcp, slow, mpi, gloo, wire = (bw(i, b) for i in ("loom-tcp", "slowest-tcp", "MPI-tcp", "Gloo", "wire"))
    if any(x != x for x in (tcp, slow, mpi, gloo)):  # NaN: an implementation is missing
        return "n/a"
    short = ["< MPI-tcp"] if tcp < mpi else []
    by_wire = False
    if slow < 1.5 * gloo:
        # 1.5x Gloo above the wire (NaN where no wire ran: the clause does not apply)
        by_wire = 1.5 * gloo > wire and tcp >= 0.9 * wire
        if not by_wire:
            short.append("< 1.5x Gloo")
    if short:
        return "short: " + ", ".join(short)
    return "met by the wire clause (1.5x Gloo > wire, tcp >= 0.9 wire)" if by_wire else "met"


def comm(rounds=3):
    """All-reduce (fp32 sum) at 2 and 4 ranks, 4 KiB .. 256 MiB: Loom on each transport (shm, tcp,
    grpc) beside Gloo, OpenMPI over TCP, OpenMPI shared memory and the wire's own limit.

    The machine is shared and noisy, so every round runs every implementation once, in the
    same order, and the median over rounds of each size's p50 is kept."""
    sizes = "4KiB..256MiB"
    gloo_sizes = ",".join(f"{4 << (2 * i)}KiB" for i in range(9))
    transports = ("shm", "tcp", "grpc")
    torch_ok = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode == 0
    if not torch_ok:
        print("# python3-torch missing: Gloo skipped")
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")
    mpi = shutil.which("mpicc") and shutil.which("mpirun")
    if mpi:
        run(["mpicc", "-O2", os.path.join(ANCHORS, "mpi_allreduce.c"), "-o", "/tmp/loom-mpi-allreduce"])
    else:
        print("# OpenMPI missing (../shared/bench/install.sh): skipped")
    mpi_btl = {"MPI-tcp": ["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"],
               "MPI-shm": ["--mca", "btl", "vader,self"]}
    for ranks in (2, 4):
        res = {}  # impl -> bytes -> [(p50 µs, busbw GB/s)]
        add = lambda impl, b, p50, bw: res.setdefault(impl, {}).setdefault(b, []).append((p50, bw))
        for _ in range(rounds):
            for name, btl in (mpi_btl.items() if mpi else ()):
                out = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), "--mca", "pml", "ob1"] + btl +
                          ["/tmp/loom-mpi-allreduce"])
                for l in out.splitlines():
                    f = l.split()
                    if len(f) == 8 and f[0].isdigit():
                        add(name, int(f[0]), float(f[3]), float(f[6]))
            # The wire: plain sockets moving the all-reduce's bytes, the best of 1 and 2 scheduler
            # threads per process (and at 4 ranks of the ring and pairs patterns), per size.
            best = {}
            # (--window -1: the socket buffers Loom's same-host tcp links use; autotuning otherwise)
            wire_runs = [[]] if ranks == 2 else [["--ranks", str(ranks), "--pattern", p] for p in ("ring", "pairs")]
            for extra in wire_runs:
                for procs, window in (("1", "0"), ("2", "0"), ("1", "-1")):
                    for r in jsonl(run([LOOM, "bench", "wire", "--sizes", sizes if ranks == 2 else "1MiB..256MiB",
                                        "--procs", procs, "--window", window, "--log-format", "json"] + extra)):
                        if r["bytes"] not in best or r["gbps"] > best[r["bytes"]]["gbps"]:
                            best[r["bytes"]] = r
            for b, r in best.items():
                add("wire", b, r["time_us_p50"], r["gbps"])
            for tr in transports:
                for r in jsonl(run([LOOM, "bench", "allreduce", "--ranks", str(ranks), "--sizes", sizes, "--transport", tr,
                                    "--log-format", "json"])):
                    # Rank 0's own times, as mpi_allreduce.c and the wire time; the slowest
                    # rank's per iteration, as gloo_allreduce.py times, for the Gloo ratio.
                    add("loom-" + tr, r["bytes"], r["time_us_p50_rank0"], r["busbw_gbps_rank0"])
                    add("slowest-" + tr, r["bytes"], r["time_us_p50"], r["busbw_gbps"])
            if torch_ok:
                out = run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "gloo_allreduce.py"),
                           "--ranks", str(ranks), "--sizes", gloo_sizes], env=CLEAN)
                for r in jsonl(out):
                    add("Gloo", r["bytes"], r["time_us_p50"], r["busbw_gbps"])
        impls = ["loom-" + t for t in transports] + [i for i in ("Gloo", "MPI-tcp", "MPI-shm", "wire") if i in res]
        allb = sorted({b for i in impls for b in res.get(i, {})})
        p50 = lambda i, b: med([x[0] for x in res.get(i, {}).get(b, [])])
        bw = lambda i, b: med([x[1] for x in res.get(i, {}).get(b, [])])
        print(f"## All-reduce (fp32 sum), {ranks} ranks on one host, median of {rounds} rounds (each runs every implementation once)")
        print("p50 µs:")
        print(f"{'bytes':>10} " + " ".join(f"{i:>10}" for i in impls))
        for b in allb:
            print(f"{b:>10} " + " ".join(f"{p50(i, b):10.1f}" for i in impls))
        print("busbw GB/s:")
        print(f"{'bytes':>10} " + " ".join(f"{i:>10}" for i in impls))
        for b in allb:
            print(f"{b:>10} " + " ".join(f"{bw(i, b):10.3f}" for i in impls))
        # The targets, as ratios (busbw, or p50 at 4 KiB where lower is better).
        cols = [("tcp/MPI-tcp", "loom-tcp", "MPI-tcp"), ("tcp/Gloo", "slowest-tcp", "Gloo"), ("shm/MPI-shm", "loom-shm", "MPI-shm")]
        cols.insert(0, ("tcp/wire", "loom-tcp", "wire"))
        print("ratios (busbw; at 4 KiB: their p50 / ours, so > 1 is faster):")
        print(f"{'bytes':>10} " + " ".join(f"{c[0]:>12}" for c in cols) + "  tcp target")
        for b in allb:
            cells = []
            for _, a, ref in cols:
                r = p50(ref, b) / p50(a, b) if b < 1 << 20 else bw(a, b) / bw(ref, b)
                cells.append(f"{r:12.2f}")
            print(f"{b:>10} " + " ".join(cells) + "  " + tcp_verdict(b, bw))
        print()
    print("MPI: OpenMPI, pml ob1, btl tcp,self on lo (MPI-tcp) or vader,self (MPI-shm); ../shared/bench/mpi_allreduce.c.")
    print("Timing: loom-* columns are rank 0's own p50 (as mpi_allreduce.c and the wire time); the tcp/Gloo ratio")
    print("uses Loom's slowest rank per iteration, as gloo_allreduce.py times (`loom bench allreduce` prints both).")
    print("busbw = bytes x 2(n-1)/n / p50 (nccl-tests). 'wire' is `loom bench wire`, the fastest of --procs 1 and 2")
    print("(autotuned socket buffers) and --procs 1 --window -1 (the buffers Loom's same-host tcp links use):")
    print("at 2 ranks one plain socket between two processes, both directions at once (each rank of a 2-rank")
    print("all-reduce sends and receives the whole buffer once, so its GB/s per direction bounds a 2-rank busbw, and")
    print("its 4 KiB p50 is the floor of a 4 KiB exchange); at 4 ranks, from 1 MiB, the faster of --pattern ring and")
    print("pairs: 4 processes moving the all-reduce's 2(n-1)/n of the buffer over plain sockets in a ring's or")
    print("halving-doubling's steps, GB/s = bytes sent per process / p50. Targets (issue 14): tcp >= MPI-tcp and >= 1.5x Gloo,")
    print("or >= 0.9 of the wire, from 1 MiB up; tcp 4 KiB p50 <= 1.5x the wire's and <= MPI-tcp's; shm >= MPI-shm")
    print("at every size and shm 4 KiB p50 <= 10 µs.")


def dp(rounds=3, steps=120, warmup=10):
    """Data-parallel scaling: examples/default.yaml at dp 1 (1 worker × 1 thread) and dp 2 (2 local
    worker processes × 1 thread, shm between them), 8 sequences per rank, eval and checkpoints off,
    alternating dp 1 and dp 2 in every round. tokens/s is the tokens per step ÷ the median step time
    after the warm-up steps (the first steps tune GEMMs); exposed is the share of the step the ranks'
    summaries count as communication not overlapped with compute (mean over ranks)."""
    import tempfile
    print(f"## Data-parallel scaling: examples/default.yaml, dp 2 vs dp 1, 1 thread per worker ({rounds} rounds, {steps} steps, median step after {warmup})")
    src = open(os.path.join(ROOT, "examples", "default.yaml")).read()
    tmp = tempfile.mkdtemp(prefix="loom-bench-dp-")
    med = lambda xs: sorted(xs)[len(xs) // 2]
    specs = {}
    for n in (1, 2):
        y = re.sub(r"(?m)^  dp: \d+", f"  dp: {n}", src)
        y = re.sub(r"(?m)^  global_batch: \d+", f"  global_batch: {8 * n}", y)
        y = re.sub(r"(?m)^  micro_batch: \d+", "  micro_batch: 8", y)
        y = re.sub(r"(?m)^  steps: \d+", f"  steps: {steps}", y)
        y = re.sub(r"(?m)^  eval_every: \d+", "  eval_every: 0", y)
        y = re.sub(r"(?m)^  every: \d+", "  every: 0", y)
        y = re.sub(r"(?m)^name: \S+", f"name: bench-dp{n}", y)
        y = y.replace("path: out/", "path: " + os.path.join(ROOT, "out") + "/")
        y = re.sub(r"(?m)^  dir: \S+", "  dir: " + os.path.join(tmp, f"ck{n}"), y)
        specs[n] = os.path.join(tmp, f"dp{n}.yaml")
        open(specs[n], "w").write(y)
    summary = re.compile(r"rank (\d+): \d+ steps, mean step ([\d.]+) ms, ([\d.]+) tokens/s; .* exposed ([\d.]+)% in all")
    tok, exposed = {1: [], 2: []}, {1: [], 2: []}
    for _ in range(rounds):
        for n in (1, 2):
            p = subprocess.run([LOOM, "run", specs[n], "--threads", "1", "--log-format", "json", "--sample-tokens", "0", "--overwrite"],
                               capture_output=True, text=True, cwd=tmp)
            if p.returncode != 0:
                print(f"dp {n}: loom run failed ({p.returncode}): {p.stderr[-2000:]}")
                return
            st = [r["step_s"] for r in jsonl(p.stdout) if "step_s" in r and r.get("step", 0) > warmup]
            tok[n].append(8 * 128 * n / med(st))
            ex = [float(m.group(4)) for m in summary.finditer(p.stdout + p.stderr)]
            exposed[n].append(sum(ex) / len(ex) if ex else float("nan"))
    shutil.rmtree(tmp, ignore_errors=True)
    ratios = sorted(b / a for a, b in zip(tok[1], tok[2]))
    r, ex = med(ratios), med(exposed[2])
    print(f"dp 1: {med(tok[1]):7.0f} tokens/s   dp 2: {med(tok[2]):7.0f} tokens/s   (per round: "
          + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(tok[1], tok[2])) + ")")
    print(f"dp 2 / dp 1: {r:.2f}× (rounds {ratios[0]:.2f}–{ratios[-1]:.2f}; target ≥ 1.90×: {'met' if r >= 1.9 else 'MISSED'}); "
          f"exposed communication at dp 2: {ex:.1f}% of the step (rounds {min(exposed[2]):.1f}–{max(exposed[2]):.1f}; target ≤ 3%: {'met' if ex <= 3 else 'MISSED'})")


if __name__ == "__main__":
    want = sys.argv[1:] or ["gemm", "step", "comm"]
    exe = openblas_exe()
    if exe is not None:
        anchors(exe)
    for name in want:
        {"gemm": gemm, "step": step, "comm": comm, "dp": dp}[name]()
        print()
