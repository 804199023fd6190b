#!/usr/bin/env python3
"""PyTorch reference check for mptrain's GPT-2 (run where PyTorch is installed, e.g. the GPU machine).

For each precision (fp32, bf16) it runs `mptrain dump`, which writes the initial weights (Hugging Face
GPT-2 names, safetensors), the first batch with mptrain's logits, loss and unscaled parameter gradients,
and a K-step training trajectory (batches and losses). This script builds the same GPT-2 in plain
PyTorch from the exported weights, in FP32 with TF32 off (the ground truth), and compares:
  * loss, logits and the gradient of every parameter (relative L2 error per tensor);
  * the K-step loss trajectory, training the PyTorch model with torch.optim.AdamW on the same batches,
    learning rates, weight-decay groups (2-D weights only) and global-norm clipping.
Tolerances (relative L2 error, per tensor, against FP32 PyTorch):
  fp32: 1e-4 for loss, logits and every gradient; 1e-4 per trajectory step. Both sides accumulate in FP32
        but in different orders (cuBLASLt vs cuBLAS tiling, fused attention vs SDPA), giving ~1e-6..1e-5.
  bf16: loss 1e-2, logits 3e-2, gradients 8e-2, trajectory 2e-2 per step. mptrain stores every
        activation (and the residual stream) in bf16, 8 significant bits: one rounding is 2^-9 = 2e-3
        relative and a 4-layer forward + backward compounds tens of them. For scale, the script also prints
        PyTorch's own autocast-bf16 errors against the same FP32 truth.
Exit status 0 when every check passes, 1 otherwise.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

TOL = {
    "fp32": {"loss": 1e-4, "logits": 1e-4, "grad": 1e-4, "traj": 1e-4},
    "bf16": {"loss": 1e-2, "logits": 3e-2, "grad": 8e-2, "traj": 2e-2},
}
NP_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
             "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = data[base + b:base + e]
        if t["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=NP_DTYPES[t["dtype"]])
        out[name] = torch.from_numpy(arr.copy()).reshape(t["shape"])
    return out


class Gpt2:
    """GPT-2 in plain PyTorch over a dict of tensors with the Hugging Face names."""

    def __init__(self, weights, n_layer, n_head, device):
        self.p = {k: v.to(device=device, dtype=torch.float32).clone().requires_grad_(True) for k, v in weights.items()}
        self.L, self.H = n_layer, n_head

    def w(self, name):
        return self.p["transformer." + name]

    def forward(self, idx):
        B, T = idx.shape
        C = self.w("wte.weight").shape[1]
        x = self.w("wte.weight")[idx] + self.w("wpe.weight")[:T]
        for l in range(self.L):
            h = f"h.{l}."
            a = F.layer_norm(x, (C,), self.w(h + "ln_1.weight"), self.w(h + "ln_1.bias"), 1e-5)
            qkv = a @ self.w(h + "attn.c_attn.weight") + self.w(h + "attn.c_attn.bias")
            q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in qkv.split(C, dim=2))
            s = (q @ k.transpose(-1, -2)) / math.sqrt(C // self.H)
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            s = s.masked_fill(~mask, float("-inf"))
            y = (torch.softmax(s.float(), dim=-1).to(v.dtype) @ v).transpose(1, 2).reshape(B, T, C)
            x = x + y @ self.w(h + "attn.c_proj.weight") + self.w(h + "attn.c_proj.bias")
            a = F.layer_norm(x, (C,), self.w(h + "ln_2.weight"), self.w(h + "ln_2.bias"), 1e-5)
            a = F.gelu(a @ self.w(h + "mlp.c_fc.weight") + self.w(h + "mlp.c_fc.bias"), approximate="tanh")
            x = x + a @ self.w(h + "mlp.c_proj.weight") + self.w(h + "mlp.c_proj.bias")
        x = F.layer_norm(x, (C,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        return x @ self.w("wte.weight").t()

    def loss(self, idx, targets, autocast=False):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = self.forward(idx)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return loss, logits


def rel(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / max(b.norm().item(), 1e-30))


def run_dump(args, mode, out):
    cmd = [args.mptrain, "dump", args.config, "--out", out, "--steps", str(args.steps),
           "--set", f"precision.mode={mode}"] + sum((["--set", s] for s in args.set), [])
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def check_mode(args, mode, device):
    out = os.path.join(args.workdir, mode)
    run_dump(args, mode, out)
    meta = json.load(open(os.path.join(out, "meta.json")))
    cfg = meta["config"]
    L, H = cfg["model"]["n_layer"], cfg["model"]["n_head"]
    weights = read_safetensors(os.path.join(out, "weights.safetensors"))
    step0 = read_safetensors(os.path.join(out, "step0.safetensors"))
    traj = read_safetensors(os.path.join(out, "trajectory.safetensors"))
    tol = TOL[mode]
    failures = []

    def check(name, err, limit, extra=""):
        ok = err <= limit
        print(f"  {mode:5s} {name:42s} rel err {err:.3e}  (tol {limit:.0e}){extra}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"{mode} {name}: {err:.3e} > {limit:.0e}")

    idx = step0["inputs"].long().to(device)
    tgt = step0["targets"].long().to(device)
    ref = Gpt2(weights, L, H, device)
    loss, logits = ref.loss(idx, tgt)
    loss.backward()
    amp = Gpt2(weights, L, H, device)
    amp_loss, amp_logits = amp.loss(idx, tgt, autocast=True)
    amp_loss.backward()

    print(f"  {mode:5s} loss mptrain {step0['loss'].item():.6f}  pytorch fp32 {loss.item():.6f}  "
          f"pytorch amp-bf16 {amp_loss.item():.6f}")
    check("loss", abs(step0["loss"].item() - loss.item()) / abs(loss.item()), tol["loss"])
    check("logits", rel(step0["logits"].to(device), logits.detach()), tol["logits"],
          f"  [amp-bf16 {rel(amp_logits.detach().float(), logits.detach()):.2e}]")
    worst = (0.0, "")
    for name, p in ref.p.items():
        key = "grad." + name
        if key not in step0:
            failures.append(f"{mode}: mptrain wrote no gradient for {name}")
            continue
        e = rel(step0[key].to(device), p.grad)
        ea = rel(amp.p[name].grad, p.grad)
        if args.verbose or e > tol["grad"]:
            check("grad " + name, e, tol["grad"], f"  [amp-bf16 {ea:.2e}]")
        elif e > worst[0]:
            worst = (e, name)
        if e > worst[0]:
            worst = (e, name)
    check(f"grad, worst of {len(ref.p)} ({worst[1]})", worst[0], tol["grad"])

    # Trajectory: PyTorch FP32 AdamW on the same batches with mptrain's hyper-parameters.
    o = cfg["optimizer"]
    model = Gpt2(weights, L, H, device)
    decay = [p for n, p in model.p.items() if p.dim() == 2]
    no_decay = [p for n, p in model.p.items() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=meta["lr"][0], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    ours = traj["loss"].tolist()
    theirs = []
    for k in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = meta["lr"][k]
        opt.zero_grad(set_to_none=True)
        l, _ = model.loss(traj[f"inputs.{k}"].long().to(device), traj[f"targets.{k}"].long().to(device))
        l.backward()
        if o["clip_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(list(model.p.values()), o["clip_norm"])
        opt.step()
        theirs.append(l.item())
    print(f"  {mode:5s} trajectory mptrain  " + " ".join(f"{x:.4f}" for x in ours))
    print(f"  {mode:5s} trajectory pytorch  " + " ".join(f"{x:.4f}" for x in theirs))
    worst_step = max(range(args.steps), key=lambda k: abs(ours[k] - theirs[k]) / abs(theirs[k]))
    check(f"trajectory, worst of {args.steps} steps (step {worst_step})",
          abs(ours[worst_step] - theirs[worst_step]) / abs(theirs[worst_step]), tol["traj"])
    if theirs[-1] >= theirs[0]:
        failures.append(f"{mode}: the reference loss did not go down ({theirs[0]:.4f} -> {theirs[-1]:.4f})")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mptrain", default="build/mptrain")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "gpt2-reference.json"))
    ap.add_argument("--workdir", default="runs/reference")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="fp32,bf16")
    ap.add_argument("--set", action="append", default=[], help="extra mptrain --set overrides")
    ap.add_argument("--verbose", action="store_true", help="print every gradient comparison")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"gpt2 reference check: torch {torch.__version__} on {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    failures = []
    for mode in args.modes.split(","):
        failures += check_mode(args, mode, device)
    if failures:
        print("REFERENCE CHECK FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("REFERENCE CHECK PASSED (" + args.modes + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
