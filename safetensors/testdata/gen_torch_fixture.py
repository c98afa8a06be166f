#!/usr/bin/env python3
"""Generates torch_fixture.safetensors: a safetensors file written by torch,
by hand (struct + json + raw tensor bytes), because the `safetensors` Python
package is not available here. The Go test TestTorchFixture reads it and
checks (a) the reader against torch's bytes and (b) Loom's float32 -> F16 /
BF16 rounding against torch's `.to(dtype)` on the same inputs, including ties,
overflow and subnormals.

Usage: python3 gen_torch_fixture.py OUT.safetensors
(or `go test ./safetensors -run TestTorchFixture -update`).

With --check FILE it instead reads a file written by Loom's Go writer using
only torch and prints one line per tensor: name dtype shape values, where
shape and values are comma-separated and values are Python float reprs.
"""
import json
import struct
import sys

import torch

FIXTURE_VERSION = "1"  # bump when the tensor list below changes

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
TORCH = {v: k for k, v in DTYPES.items()}


def source_values():
    base = torch.arange(-40, 40, dtype=torch.float32) * 0.37
    edge = torch.tensor(
        [
            0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6,
            5.960464477539063e-08,  # smallest f16 subnormal
            2.9802322387695312e-08,  # half of it: ties to 0
            3.0e-08, 1e-10,
            1.0009765625, 1.00048828125, 1.00146484375,  # f16 exact, tie-even-down, tie-even-up
            1.00390625, 1.01171875,  # bf16 ties: round down to even, round up to even
            3.4e38, 1.1754943508222875e-38, 1e-45, -2.5e-39,
            float("inf"), float("-inf"), 123.456,
            6.103515625e-05, 6.1e-05,  # smallest f16 normal, just below
            3.3895313892515355e38,  # largest bf16
        ],
        dtype=torch.float32,
    )
    return torch.cat([base, edge])  # 108 values = 9 x 12


def tensors():
    src = source_values().reshape(9, 12)
    return [
        ("src", src),
        ("src.f16", src.to(torch.float16)),
        ("src.bf16", src.to(torch.bfloat16)),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 3)),
        ("ints", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
    ]


def raw_bytes(t):
    assert sys.byteorder == "little", "safetensors is little-endian"
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist())


def write(path):
    header = {"__metadata__": {"format": "pt", "generator": "gen_torch_fixture.py",
                               "fixture_version": FIXTURE_VERSION, "torch_version": torch.__version__}}
    data = bytearray()
    for name, t in tensors():
        b = raw_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def check(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    buf = blob[8 + n:]
    assert header.get("__metadata__", {}).get("format") == "pt", "transformers needs format=pt"
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dt = TORCH[info["dtype"]]
        raw = torch.tensor(list(buf[begin:end]), dtype=torch.uint8)
        t = raw.view(dt).reshape(info["shape"]) if end > begin else torch.zeros(info["shape"], dtype=dt)
        vals = ",".join(repr(v) for v in t.double().reshape(-1).tolist())
        print(name, info["dtype"], ",".join(str(d) for d in t.shape) or "-", vals or "-")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) == 2:
        write(sys.argv[1])
    else:
        sys.exit(__doc__)
