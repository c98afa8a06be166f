#!/usr/bin/env python3
"""Generate Loom's PyTorch golden fixtures for the model and optimizer tests.

Run from the repository root (only torch >= 1.13 and the standard library are
needed; no transformers):

    /usr/bin/python3 scripts/golden/make_fixtures.py            # writes model/testdata/*.bin
    /usr/bin/python3 scripts/golden/make_fixtures.py --out DIR

or equivalently `go test ./model -run Golden -update`. The Go tests read the
committed files and need no Python.

The model below re-implements Hugging Face LlamaForCausalLM exactly (eager
attention, float32): RMSNorm x*rsqrt(mean(x^2)+eps)*w, rotate-half RoPE with
inv_freq = 1/theta^(2i/hd) computed in float32, GQA via repeat_kv, causal
softmax attention scaled by 1/sqrt(hd), SwiGLU MLP down(silu(gate(x))*up(x)),
final norm, lm_head or tied embedding, mean cross-entropy with ignore_index=-100.

Fixture file format (all little endian), version 1:

    magic    8 bytes   b"LOOMGLD\\x00"
    version  uint32    1
    count    uint32    number of records
    count records, each:
        name_len uint32, name (UTF-8, name_len bytes)
        dtype    uint32    1 = float32, 2 = int32, 3 = float64
        ndim     uint32, dims uint32 x ndim
        data     prod(dims) elements of dtype

Records of one case: config (int32 [V, d, L, nH, nKV, ffn, SeqLen, tied]),
config_f64 ([rope_theta, norm_eps]), tokens, targets (int32 (B,T)),
param/<hf name> (initial weights), logits (B,T,V), loss ([1], float64),
grad/<hf name>; optimizer run: optim_f64 ([lr, min_lr, beta1, beta2, eps,
weight_decay, max_norm]), optim_i32 ([warmup, total, steps, micro_batches]),
step_loss, step_norm, step_lr (float64 [steps]; norm is before clipping),
after/<hf name> (weights after the steps); lr schedule check: sched_f64
([max_lr, min_lr]), sched_i32 ([warmup, total]), sched_lr (float64 per step).
"""

import argparse
import math
import os
import struct

import torch
import torch.nn.functional as F

MAGIC = b"LOOMGLD\x00"
VERSION = 1
DT_F32, DT_I32, DT_F64 = 1, 2, 3


class Writer:
    def __init__(self):
        self.records = []

    def add(self, name, t, dtype):
        torch_dtype = {DT_F32: torch.float32, DT_I32: torch.int32, DT_F64: torch.float64}[dtype]
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().to(torch_dtype).contiguous()
        else:  # Python numbers stay exact: no detour through float32
            t = torch.tensor(t, dtype=torch_dtype)
        fmt = {DT_F32: "f", DT_I32: "i", DT_F64: "d"}[dtype]
        flat = t.reshape(-1).tolist()
        data = struct.pack("<%d%s" % (len(flat), fmt), *flat)
        name_b = name.encode()
        head = struct.pack("<I", len(name_b)) + name_b + struct.pack("<II", dtype, t.dim())
        head += struct.pack("<%dI" % t.dim(), *t.shape)
        self.records.append(head + data)

    def write(self, path):
        with open(path, "wb") as f:
            f.write(MAGIC + struct.pack("<II", VERSION, len(self.records)))
            for r in self.records:
                f.write(r)


def param_names(cfg):
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["L"]):
        p = "model.layers.%d." % i
        names += [p + n for n in ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                  "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                  "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]]
    names.append("model.norm.weight")
    if not cfg["tied"]:
        names.append("lm_head.weight")
    return names


def init_params(cfg, seed):
    """Fixed seeded weights with non-trivial scales (norm weights are not all 1)."""
    g = torch.Generator().manual_seed(seed)
    V, d, hd = cfg["V"], cfg["d"], cfg["d"] // cfg["nH"]
    q, kv, ffn = cfg["nH"] * hd, cfg["nKV"] * hd, cfg["ffn"]
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(cfg["L"]):
        p = "model.layers.%d." % i
        shapes.update({p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                       p + "mlp.gate_proj.weight": (ffn, d), p + "mlp.up_proj.weight": (ffn, d),
                       p + "mlp.down_proj.weight": (d, ffn), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    params = {}
    for n in param_names(cfg):
        shape = shapes[n]
        if len(shape) == 1:
            t = 1 + 0.2 * torch.randn(shape, generator=g)
        elif n == "model.embed_tokens.weight":
            t = torch.randn(shape, generator=g) * (0.5 if cfg["tied"] else 1.0)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        params[n] = t.float().requires_grad_(True)
    return params


def rms_norm(x, w, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
    t = torch.arange(T, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def repeat_kv(x, n_rep):
    b, nkv, T, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, nkv, n_rep, T, hd).reshape(b, nkv * n_rep, T, hd)


def forward(cfg, P, tokens):
    """Logits (B,T,V) of LlamaForCausalLM for tokens (B,T)."""
    B, T = tokens.shape
    d, nH, nKV = cfg["d"], cfg["nH"], cfg["nKV"]
    hd = d // nH
    eps = cfg["eps"]
    cos, sin = rope_cos_sin(T, hd, cfg["theta"])
    mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
    h = F.embedding(tokens.long(), P["model.embed_tokens.weight"])
    for i in range(cfg["L"]):
        p = "model.layers.%d." % i
        x = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        q = F.linear(x, P[p + "self_attn.q_proj.weight"]).view(B, T, nH, hd).transpose(1, 2)
        k = F.linear(x, P[p + "self_attn.k_proj.weight"]).view(B, T, nKV, hd).transpose(1, 2)
        v = F.linear(x, P[p + "self_attn.v_proj.weight"]).view(B, T, nKV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, nH // nKV), repeat_kv(v, nH // nKV)
        w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd) + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32)
        a = torch.matmul(w, v).transpose(1, 2).reshape(B, T, nH * hd)
        h = h + F.linear(a, P[p + "self_attn.o_proj.weight"])
        x = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        m = F.silu(F.linear(x, P[p + "mlp.gate_proj.weight"])) * F.linear(x, P[p + "mlp.up_proj.weight"])
        h = h + F.linear(m, P[p + "mlp.down_proj.weight"])
    h = rms_norm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg["tied"] else P["lm_head.weight"]
    return F.linear(h, head)


def loss_fn(cfg, logits, targets):
    return F.cross_entropy(logits.reshape(-1, cfg["V"]), targets.reshape(-1).long(), ignore_index=-100)


def lr_lambda(max_lr, min_lr, warmup, total):
    """Loom's schedule (optim.Schedule) as a LambdaLR multiplier; s is the 0-based step."""
    def f(s):
        if s < warmup:
            return (s + 1) / warmup
        if s >= total:
            return min_lr / max_lr
        progress = (s - warmup) / (total - warmup)
        return (min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))) / max_lr
    return f


CASES = [
    # GQA (4 query heads over 2 kv heads), odd seq_len, untied head.
    dict(name="gqa_untied", V=37, d=24, L=2, nH=4, nKV=2, ffn=40, seq_len=7, B=2, T=7,
         theta=10000.0, eps=1e-5, tied=False, seed=1, ignore=[]),
    # MQA (1 kv head), tied embeddings, SeqLen longer than the batch, one ignored target.
    dict(name="mqa_tied", V=29, d=16, L=2, nH=4, nKV=1, ffn=24, seq_len=8, B=2, T=5,
         theta=500.0, eps=1e-6, tied=True, seed=2, ignore=[(1, 2)]),
    # Plain MHA, one layer, untied.
    dict(name="mha_untied", V=19, d=16, L=1, nH=2, nKV=2, ffn=20, seq_len=9, B=2, T=9,
         theta=10000.0, eps=1e-5, tied=False, seed=3, ignore=[]),
]

OPT = dict(lr=1e-2, min_lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, warmup=2, total=4, steps=3,
           micro_batches=2, clip_fraction=0.3)
SCHED = dict(max_lr=3e-4, min_lr=3e-5, warmup=3, total=10, steps=14)


def make_case(c):
    torch.manual_seed(c["seed"])
    g = torch.Generator().manual_seed(100 + c["seed"])
    cfg = c
    P = init_params(cfg, c["seed"])
    names = param_names(cfg)
    tokens = torch.randint(0, c["V"], (c["B"], c["T"]), generator=g, dtype=torch.int32)
    targets = torch.randint(0, c["V"], (c["B"], c["T"]), generator=g, dtype=torch.int32)
    for b, t in c["ignore"]:
        targets[b, t] = -100

    w = Writer()
    w.add("config", [c["V"], c["d"], c["L"], c["nH"], c["nKV"], c["ffn"], c["seq_len"], int(c["tied"])], DT_I32)
    w.add("config_f64", [c["theta"], c["eps"]], DT_F64)
    w.add("tokens", tokens, DT_I32)
    w.add("targets", targets, DT_I32)
    for n in names:
        w.add("param/" + n, P[n], DT_F32)

    logits = forward(cfg, P, tokens)
    loss = loss_fn(cfg, logits, targets)
    loss.backward()
    w.add("logits", logits, DT_F32)
    w.add("loss", [loss.item()], DT_F64)
    for n in names:
        w.add("grad/" + n, P[n].grad, DT_F32)
    grad_norm0 = torch.norm(torch.stack([torch.norm(P[n].grad) for n in names])).item()

    # AdamW steps with warm-up, clipping and gradient accumulation over micro-batches.
    o = OPT
    max_norm = o["clip_fraction"] * grad_norm0
    for n in names:
        P[n].grad = None
    params = [P[n] for n in names]
    decay = [P[n] for n in names if P[n].dim() >= 2]
    no_decay = [P[n] for n in names if P[n].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"], foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o["lr"], o["min_lr"], o["warmup"], o["total"]))
    mb = o["micro_batches"]
    rows = c["B"] // mb
    step_loss, step_norm, step_lr = [], [], []
    for _ in range(o["steps"]):
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for i in range(mb):
            sl = slice(i * rows, (i + 1) * rows)
            l = loss_fn(cfg, forward(cfg, P, tokens[sl]), targets[sl]) / mb
            l.backward()
            total += l.item()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
        assert norm > max_norm, "clipping must trigger in the fixture (norm %g, max %g)" % (norm, max_norm)
        step_lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        step_loss.append(total)
        step_norm.append(norm)
    w.add("optim_f64", [o["lr"], o["min_lr"], o["beta1"], o["beta2"], o["eps"], o["weight_decay"], max_norm], DT_F64)
    w.add("optim_i32", [o["warmup"], o["total"], o["steps"], mb], DT_I32)
    w.add("step_loss", step_loss, DT_F64)
    w.add("step_norm", step_norm, DT_F64)
    w.add("step_lr", step_lr, DT_F64)
    for n in names:
        w.add("after/" + n, P[n], DT_F32)

    # The LR schedule over warm-up, cosine decay and past the end, via LambdaLR.
    s = SCHED
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=s["max_lr"])
    ls = torch.optim.lr_scheduler.LambdaLR(dummy, lr_lambda(s["max_lr"], s["min_lr"], s["warmup"], s["total"]))
    lrs = []
    for _ in range(s["steps"]):
        lrs.append(dummy.param_groups[0]["lr"])
        dummy.step()
        ls.step()
    w.add("sched_f64", [s["max_lr"], s["min_lr"]], DT_F64)
    w.add("sched_i32", [s["warmup"], s["total"]], DT_I32)
    w.add("sched_lr", lrs, DT_F64)
    return w, loss.item(), step_norm, max_norm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "model", "testdata"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for c in CASES:
        w, loss, norms, max_norm = make_case(c)
        path = os.path.normpath(os.path.join(args.out, c["name"] + ".bin"))
        w.write(path)
        print("%s: loss %.6f, grad norms %s (max_norm %.4g), %d bytes" % (
            path, loss, ["%.4g" % n for n in norms], max_norm, os.path.getsize(path)))


if __name__ == "__main__":
    main()
