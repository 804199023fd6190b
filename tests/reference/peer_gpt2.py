#!/usr/bin/env python3
"""The PyTorch peer of mptrain's GPT-2 benchmark: the same model and step, written as a PyTorch user would.

GPT-2 (pre-LN blocks, causal self-attention through scaled_dot_product_attention, 4x GELU(tanh) MLP, LM head
tied to the token embedding, vocabulary padded to a multiple of 128 as mptrain pads it), trained with
torch.compile, autocast (bf16; or fp16 with a GradScaler: dynamic loss scaling), fused AdamW (betas 0.9/0.95,
weight decay 0.1 on 2-D weights), global-norm clipping at 1.0. Several GPUs: torchrun, DistributedDataParallel.
Batches are windows of T + 1 tokens from an mptrain token shard (--data), or uniform random tokens.

Timing: host wall clock around each step with a device synchronisation; the first --warmup steps (compilation,
autotuning), then more for --warmup-seconds (a power-capped GPU settles its clocks in its first seconds of
load; rank 0's clock decides), are excluded; median and spread of the next --steps minus --warmup steps. Memory: torch.cuda.max_memory_allocated.

usage: [torchrun --nproc-per-node N] peer_gpt2.py [--dtype bf16|fp16] [--batch 16] [--seq 1024]
          [--layers 12 --heads 12 --embd 768 --vocab 50257] [--steps 30] [--warmup 10] [--warmup-seconds 0] [--data SHARD] [--out F.json]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.fc_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.fc_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, L, H, C, V, T):
        super().__init__()
        Vp = (V + 127) // 128 * 128
        self.wte = nn.Embedding(Vp, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.V = V
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if n.endswith(("c_proj.weight", "fc_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.h:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
        logits = logits[..., : self.V]
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def read_shard(path):
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:8] != b"MPTTOKEN":
            raise SystemExit(f"{path}: not an mptrain token shard")
        width = int.from_bytes(head[12:16], "little")
        count = int.from_bytes(head[16:24], "little")
        dt = {1: np.uint8, 2: np.uint16, 4: np.uint32}[width]
        return np.frombuffer(f.read(count * width), dtype=dt).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--warmup-seconds", type=float, default=0.0)
    ap.add_argument("--data")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    if world > 1:
        torch.distributed.init_process_group("nccl")
    torch.manual_seed(1234)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = Gpt2(a.layers, a.heads, a.embd, a.vocab, a.seq).cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    run = model if a.no_compile else torch.compile(model)
    if world > 1:
        run = torch.nn.parallel.DistributedDataParallel(run, device_ids=[local])
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=a.dtype == "fp16", init_scale=65536.0)

    tokens = read_shard(a.data) if a.data else None
    rng = np.random.default_rng(1234 + rank)
    B, T = a.batch, a.seq

    def batch():
        if tokens is None:
            x = rng.integers(0, a.vocab, size=(B, T + 1))
        else:
            starts = rng.integers(0, len(tokens) - T - 1, size=B)
            x = np.stack([tokens[s:s + T + 1] for s in starts])
        x = torch.from_numpy(x).pin_memory().cuda(non_blocking=True)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    times, losses = [], []
    timed_steps = max(1, a.steps - a.warmup)
    warm, warm_steps, t_warm = True, 0, time.perf_counter()
    while len(times) < timed_steps:
        idx, tgt = batch()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            loss = run(idx, tgt)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if not warm:
            times.append(dt)
        else:
            warm_steps += 1
            if warm_steps <= a.warmup:
                t_warm = time.perf_counter()
            more = warm_steps < a.warmup or time.perf_counter() - t_warm < a.warmup_seconds
            if world > 1:  # rank 0 decides: every rank runs the same steps
                flag = torch.tensor([1 if more else 0], device="cuda")
                torch.distributed.broadcast(flag, 0)
                more = bool(flag.item())
            warm = more
    med = statistics.median(times)
    tok_s = B * T * world / med
    peak = torch.cuda.max_memory_allocated() / 2**30
    free, total = torch.cuda.mem_get_info()
    res = {"impl": "pytorch" + ("" if a.no_compile else " compiled"), "dtype": a.dtype, "world": world, "B": B, "T": T,
           "median_step_ms": 1e3 * med, "spread_ms": 1e3 * (max(times) - min(times)), "tokens_per_s": tok_s,
           "p10_step_ms": 1e3 * float(np.quantile(times, 0.1)), "p90_step_ms": 1e3 * float(np.quantile(times, 0.9)),
           "peak_gib": peak, "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
           "device_used_gib": (total - free) / 2**30, "first_loss": losses[0], "last_loss": losses[-1], "torch": torch.__version__,
           "device": torch.cuda.get_device_name(),
           "warmup_steps": warm_steps, "timed_steps": len(times)}
    if rank == 0:
        print(f"peer: PyTorch {torch.__version__} {res['impl']} {a.dtype} on {world} GPU(s), B={B} T={T}: "
              f"{1e3 * med:.1f} ms/step (spread {res['spread_ms']:.1f}) {tok_s:,.0f} tokens/s, "
              f"peak {peak:.2f} GiB allocated ({res['device_used_gib']:.2f} GiB in use on the device), loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=2)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
