#!/usr/bin/python3
# What bf16 mixed precision does to a 200-step `tiny` loss curve in PyTorch, for comparison with
# Loom's `make bf16-parity` (cmd/loom TestBF16TracksFP32). Debian's python3-torch 1.13.
#
# The model is Loom's `tiny` (examples/tiny.yaml: byte vocabulary 258, d 128, 4 layers, 4 heads,
# ffn 352, T 128, 16 sequences per step, untied head; init N(0, 0.02), residual projections
# scaled by 1/sqrt(2L)), trained on the Go sources of strings, bytes and sort with Loom's
# optimizer settings (AdamW lr 3e-3 → 3e-4 cosine, 30 warmup steps, betas 0.9/0.95, weight decay
# 0.1 on matrices, clip 1.0). Precisions (--precision, comma-separated):
#   fp32       plain float32
#   fp32-p     float32 with every initial weight multiplied by 1 + 1e-6·u, u ~ U[-1, 1): the
#              spread of the curve under a perturbation far below bf16's rounding (2^-9)
#   fp32-noise float32 with every gradient element multiplied by 1 + 0.004·N(0, 1) before clipping:
#              unbiased noise of the size bf16's rounding leaves in Loom's gradients (0.2–0.6%
#              relative error per tensor, cmd/loom TestBF16GradientsMatchFP32)
#   loom-bf16  what Loom's train.precision: bf16 computes: every linear layer (and the head)
#              multiplies bf16-rounded inputs with float32 accumulation and float32 outputs, its
#              backward rounds the output gradient, the saved input and the weight; attention,
#              norms, softmax, the loss and AdamW stay float32
#   autocast   torch.autocast("cpu", dtype=torch.bfloat16) around the forward (PyTorch users'
#              bf16: linear and attention matmuls in bf16 with bf16 outputs)
# For each seed it prints, per precision, the worst single-step relative difference from fp32,
# the worst 10-step-mean difference, how many steps are lower / higher by more than 0.7%, and the
# mean difference over the second half. One thread (Debian's torch takes OpenBLAS's thread count
# from the environment); about 2 min per 200-step run on a 2-core Xeon VM:
#
#   OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 /usr/bin/python3 scripts/bf16_torch.py \
#       --seeds 1337,7,99 --precision loom-bf16,autocast,fp32-noise
import argparse, glob, json, math, os
import torch, torch.nn as nn, torch.nn.functional as F

V, D, L, H, FFN, T, B = 258, 128, 4, 4, 352, 128, 16


def rbf(x):
    return x.bfloat16().float()


class BF16Matmul(torch.autograd.Function):
    """x @ w.T with bf16-rounded operands and float32 accumulation, forward and backward."""

    @staticmethod
    def forward(ctx, x, w):
        xr, wr = rbf(x), rbf(w)
        ctx.save_for_backward(xr, wr)
        return xr @ wr.t()

    @staticmethod
    def backward(ctx, g):
        xr, wr = ctx.saved_tensors
        gr = rbf(g)
        gx = gr @ wr
        gw = gr.reshape(-1, gr.shape[-1]).t() @ xr.reshape(-1, xr.shape[-1])
        return gx, gw


class Linear(nn.Module):
    def __init__(s, din, dout, mode):
        super().__init__()
        s.weight = nn.Parameter(torch.empty(dout, din))
        s.mode = mode

    def forward(s, x):
        if s.mode == "loom-bf16":
            return BF16Matmul.apply(x, s.weight)
        return F.linear(x, s.weight)


class RMSNorm(nn.Module):
    def __init__(s, d, eps=1e-5):
        super().__init__(); s.eps = eps; s.weight = nn.Parameter(torch.ones(d))

    def forward(s, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + s.eps) * s.weight).to(x.dtype)


def rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(s, mode):
        super().__init__()
        s.n1, s.n2 = RMSNorm(D), RMSNorm(D)
        s.q, s.k, s.v, s.o = (Linear(D, D, mode) for _ in range(4))
        s.gate, s.up, s.down = Linear(D, FFN, mode), Linear(D, FFN, mode), Linear(FFN, D, mode)

    def forward(s, x, cos, sin, mask):
        hd = D // H
        h = s.n1(x)
        q, k, v = (p(h).view(B, T, H, hd).transpose(1, 2) for p in (s.q, s.k, s.v))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.float().masked_fill(mask, float("-inf")).softmax(-1).to(v.dtype)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + s.o(y)
        h = s.n2(x)
        return x + s.down(F.silu(s.gate(h)) * s.up(h))


class Tiny(nn.Module):
    def __init__(s, mode):
        super().__init__()
        s.emb = nn.Parameter(torch.empty(V, D))
        s.blocks = nn.ModuleList(Block(mode) for _ in range(L))
        s.norm, s.head = RMSNorm(D), Linear(D, V, mode)
        inv = 1.0 / (10000.0 ** (torch.arange(0, D // H, 2).float() / (D // H)))
        f = torch.outer(torch.arange(T).float(), inv)
        s.register_buffer("cos", torch.cos(f)); s.register_buffer("sin", torch.sin(f))
        s.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(s, idx, tgt):
        x = s.emb[idx]
        for b in s.blocks:
            x = b(x, s.cos, s.sin, s.mask)
        logits = s.head(s.norm(x))
        return F.cross_entropy(logits.float().view(-1, V), tgt.reshape(-1))


def init(m, seed):
    g = torch.Generator().manual_seed(seed)
    for n, p in m.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * L) if n.endswith(("o.weight", "down.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def lr_at(step, steps, lr=3e-3, min_lr=3e-4, warm=30):
    if step < warm:
        return lr * (step + 1) / warm
    p = (step - warm) / (steps - warm)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


def tokens():
    src = os.path.join(os.popen("go env GOROOT").read().strip(), "src")
    buf = bytearray()
    for pkg in ("strings", "bytes", "sort"):
        for f in sorted(glob.glob(os.path.join(src, pkg, "**", "*.go"), recursive=True)):
            buf += open(f, "rb").read() + b"\n"
    return torch.tensor(list(buf), dtype=torch.long)


def run(mode, seed, steps, data, batches):
    torch.manual_seed(seed)
    m = Tiny(mode)
    init(m, seed)
    if mode == "fp32-p":
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 1e-6 * (2 * torch.rand(p.shape, generator=g) - 1))
    noise = torch.Generator().manual_seed(seed + 2)
    decay = [p for p in m.parameters() if p.dim() == 2]
    other = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        idx = batches[step]
        w = torch.stack([data[i:i + T + 1] for i in idx.tolist()])
        x, y = w[:, :-1], w[:, 1:]
        opt.zero_grad(set_to_none=True)
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(x, y)
        else:
            loss = m(x, y)
        loss.backward()
        if mode == "fp32-noise":
            with torch.no_grad():
                for p in m.parameters():
                    p.grad.mul_(1 + 0.004 * torch.randn(p.shape, generator=noise))
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1337")
    ap.add_argument("--precision", default="fp32-p,loom-bf16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = tokens()
    res = {}
    for seed in map(int, a.seeds.split(",")):
        g = torch.Generator().manual_seed(seed)
        batches = [torch.randint(0, len(data) - T - 1, (B,), generator=g) for _ in range(a.steps)]
        base = run("fp32", seed, a.steps, data, batches)
        res[f"fp32/{seed}"] = base
        for mode in a.precision.split(","):
            ls = run(mode, seed, a.steps, data, batches)
            res[f"{mode}/{seed}"] = ls
            rel = [(b - f) / f for b, f in zip(ls, base)]
            w = max(range(len(rel)), key=lambda i: abs(rel[i]))
            m10 = [(sum(ls[i:i + 10]) - sum(base[i:i + 10])) / sum(base[i:i + 10]) for i in range(0, a.steps, 10)]
            lo = sum(r < -0.007 for r in rel); hi = sum(r > 0.007 for r in rel)
            print(f"seed {seed} {mode:9s}: fp32 {base[0]:.4f}→{base[-1]:.4f}, {mode} →{ls[-1]:.4f}; worst step "
                  f"{100 * rel[w]:+.2f}% (step {w + 1}), worst 10-step mean {100 * max(m10, key=abs):+.2f}%, "
                  f"|Δ|>0.7%: {lo} lower, {hi} higher; mean Δ over the second half {100 * sum(rel[len(rel) // 2:]) / max(1, len(rel) - len(rel) // 2):+.3f}%",
                  flush=True)
    if a.out:
        json.dump(res, open(a.out, "w"))


if __name__ == "__main__":
    main()
