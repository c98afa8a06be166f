#!/usr/bin/python3
"""PyTorch Gloo all-reduce (fp32 sum) on TCP loopback with N ranks: the
reference that `loom bench allreduce` is compared with (scripts/bench.py).

../shared/bench/gloo_allreduce.py measures 2 ranks; this one takes
--ranks and --sizes and prints one JSON object per size, with the same
fields as `loom bench allreduce --log-format json`. Timing: each rank times
every operation; an iteration's time is the slowest rank's (as Loom's
benchmark does), p50 over iterations; busbw = bytes x 2(n-1)/n / p50.

Run with Debian's interpreter: /usr/bin/python3 scripts/gloo_allreduce.py --ranks 4
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(s):
    for u, m in UNITS.items():
        if s.endswith(u):
            return int(s[: -len(u)]) * m
    return int(s)


def iters_for(nbytes):
    return int(min(500, max(5, (512 << 20) // nbytes)))


def worker(rank, world, port, sizes, q):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    out = []
    for nbytes in sizes:
        x = torch.full((nbytes // 4,), float(rank + 1))
        for _ in range(3):
            dist.all_reduce(x)
        dist.barrier()
        n = iters_for(nbytes)
        ts = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            t0 = time.perf_counter()
            dist.all_reduce(x)
            ts[i] = time.perf_counter() - t0
        dist.all_reduce(ts, op=dist.ReduceOp.MAX)
        out.append((nbytes, sorted(ts.tolist())))
    if rank == 0:
        q.put(out)
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--sizes", default="4KiB,1MiB,16MiB,64MiB,256MiB")
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(r, a.ranks, a.port, sizes, q)) for r in range(a.ranks)]
    for p in ps:
        p.start()
    res = q.get()
    for p in ps:
        p.join()
    f = 2 * (a.ranks - 1) / a.ranks
    for nbytes, ts in res:
        p50, p90 = ts[len(ts) // 2], ts[min(len(ts) - 1, len(ts) * 9 // 10)]
        print(json.dumps({"op": "sum", "impl": "gloo", "ranks": a.ranks, "bytes": nbytes, "iters": len(ts),
                          "time_us_p50": p50 * 1e6, "time_us_p90": p90 * 1e6,
                          "algbw_gbps": nbytes / p50 / 1e9, "busbw_gbps": f * nbytes / p50 / 1e9}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
