#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of `mptrain bench-attention`, per backend.

Causal attention, q/k/v of shape [B, H, T, D] (SDPA's own layout), forward and backward timed with CUDA
events (median of --iters after 3 warm-ups). FLOPs are counted as mptrain counts them: forward
4 B H T^2 D / 2 (causal), backward 2.5 times that. One line per backend that runs on this machine.

usage: attention_peer.py [--dtype bf16|fp16] [--batch 16] [--seq 1024] [--heads 12] [--head-dim 64]
                         [--iters 20] [--out FILE.json]
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, iters):
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), max(times) - min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out")
    a = ap.parse_args()
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    B, H, T, D = a.batch, a.heads, a.seq, a.head_dim
    g = torch.Generator(device="cuda").manual_seed(1)
    # The value ranges of mptrain bench-attention: q, k in [-2, 2), v and dout in [-1, 1).
    q = (torch.rand(B, H, T, D, device="cuda", generator=g) * 4 - 2).to(dt).requires_grad_()
    k = (torch.rand(B, H, T, D, device="cuda", generator=g) * 4 - 2).to(dt).requires_grad_()
    v = (torch.rand(B, H, T, D, device="cuda", generator=g) * 2 - 1).to(dt).requires_grad_()
    dout = (torch.rand(B, H, T, D, device="cuda", generator=g) * 2 - 1).to(dt)
    flops = 4.0 * B * H * T * T * D / 2
    rows = []
    print(f"attention {a.dtype} B={B} T={T} H={H} D={D} causal, PyTorch {torch.__version__} "
          f"scaled_dot_product_attention on {torch.cuda.get_device_name()}")
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                f_ms, f_spread = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), a.iters)
                b_ms, b_spread = time_ms(
                    lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), a.iters)
        except Exception as e:  # a backend this build or device does not have
            print(f"  {name:9s} not available: {str(e).splitlines()[0][:100]}")
            continue
        row = {"impl": f"torch sdpa {name}", "dtype": a.dtype, "B": B, "T": T, "H": H, "D": D,
               "forward_ms": f_ms, "backward_ms": b_ms, "forward_tflops": flops / f_ms * 1e-9,
               "backward_tflops": 2.5 * flops / b_ms * 1e-9}
        rows.append(row)
        print(f"  {name:9s} forward  {f_ms:8.3f} ms (spread {f_spread:.3f}) {row['forward_tflops']:7.1f} TFLOP/s")
        print(f"  {name:9s} backward {b_ms:8.3f} ms (spread {b_spread:.3f}) {row['backward_tflops']:7.1f} TFLOP/s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
