#!/usr/bin/python3
"""PyTorch CPU baseline for the training-step benchmark (BENCHMARKS.md).

Builds the same Mamba-1 byte model as the Go benchmark
(internal/model/bench_test.go: V 256, D 512, L 6, N 16, K 4, expand 2,
R = ceil(D/16) = 32, LayerNorm pre-norm residual blocks, tied head, float32)
and times one training step: mean next-byte cross-entropy over a (B,T) batch
of bytes, loss.backward(). It prints the median time per step over --iters
steps after --warmup steps, and bytes/s = B*T / median.

Two implementations of the selective scan:

  --scan hf     HF transformers' MambaMixer slow (pure torch) path: the
                discretisation deltaA = exp(delta (x) A) and deltaB_u are
                materialised as (B,E,T,N), then a Python loop over T does
                state = deltaA[:,:,t]*state + deltaB_u[:,:,t] and
                y_t = state @ C_t; autograd differentiates through the loop.
                Its training step is O(T^2): the backward of each
                deltaA[:,:,t] indexing writes a zero gradient of the whole
                (B,E,T,N) tensor and adds into it. Not a fair baseline at
                T=1024; kept to show that.
  --scan loop   the same, with the per-step slices taken by unbind(), whose
                backward is one stack: the HF slow path as a PyTorch user
                would fix it for training.
  --scan fused  the same scan as a torch.autograd.Function with a hand-written
                backward: the forward loop writes every state into one
                preallocated (T,B,E,N) tensor with one addcmul per step, the
                backward runs the adjoint recurrence in reverse with one
                addcmul per step, and everything else (the gradients of
                deltaA, deltaB_u, B, C, delta, u, A, D) is whole-tensor ops
                and batched matmuls. No autograd graph is built inside the
                loop. This is what a careful PyTorch user would write on the
                CPU; it is numerically the same recurrence (no log-space
                cumulative-sum trick).

--verify DIR checks both implementations against the float64 reference
values of testdata/reference/ssm_layernorm (LayerNorm, untied head): loss
and every parameter's gradient.

Use Debian's python3-torch with /usr/bin/python3. Debian links torch to the
system BLAS (libblas.so.3), the netlib reference BLAS unless an optimised one
is installed: install libopenblas0-openmp (the result prints which BLAS is
loaded). scripts/bench_cpu_train.sh runs this script with LD_PRELOAD of
libtcmalloc_minimal.so.4 (libtcmalloc-minimal4), which makes it 1.4-1.7x
faster than with glibc's malloc.
"""

import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# The selective scan with a hand-written backward.

class SelectiveScan(torch.autograd.Function):
    """y = scan(u, delta, A, B, C) + D*u.

    u, delta: (Bsz,E,T); A: (E,N); Bm, Cm: (Bsz,T,N); D: (E). Returns
    y (Bsz,E,T). States are kept in (T,Bsz,E,N) so that each step's slice is
    contiguous.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D):
        Bsz, E, T = u.shape
        N = A.shape[1]
        delta_t = delta.permute(2, 0, 1)  # (T,Bsz,E)
        u_t = u.permute(2, 0, 1)
        B_t = Bm.transpose(0, 1).contiguous()  # (T,Bsz,N)
        C_t = Cm.transpose(0, 1).contiguous()
        dA = delta_t.unsqueeze(-1) * A  # (T,Bsz,E,N)
        dA.exp_()
        du_t = (delta_t * u_t).contiguous()  # (T,Bsz,E)
        h = du_t.unsqueeze(-1) * B_t.unsqueeze(2)  # deltaB_u, overwritten by the states
        for t in range(1, T):
            h[t].addcmul_(dA[t], h[t - 1])
        # y_t[e] = sum_n h_t[e,n] C_t[n]
        y = torch.bmm(h.view(T * Bsz, E, N), C_t.view(T * Bsz, N, 1)).view(T, Bsz, E)
        y = y.permute(1, 2, 0) + u * D.unsqueeze(-1)
        ctx.save_for_backward(u, delta, A, B_t, C_t, D, dA, h, du_t)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B_t, C_t, D, dA, h, du_t = ctx.saved_tensors
        Bsz, E, T = u.shape
        N = A.shape[1]
        TB = T * Bsz
        gy_t = gy.permute(2, 0, 1).contiguous()  # (T,Bsz,E)
        # Through y_t = h_t . C_t
        gC = torch.bmm(gy_t.view(TB, 1, E), h.view(TB, E, N)).view(T, Bsz, N)
        G = gy_t.unsqueeze(-1) * C_t.unsqueeze(2)  # dL/dh_t from y_t, (T,Bsz,E,N)
        # Adjoint recurrence: G_t += deltaA_{t+1} * G_{t+1}
        for t in range(T - 2, -1, -1):
            G[t].addcmul_(dA[t + 1], G[t + 1])
        # deltaB_u = (delta*u) * B
        gB = torch.bmm(du_t.view(TB, 1, E), G.view(TB, E, N)).view(T, Bsz, N)
        g_du = torch.bmm(G.view(TB, E, N), B_t.view(TB, N, 1)).view(T, Bsz, E)
        # h_t = deltaA_t * h_{t-1} + deltaB_u_t: P = dL/d deltaA_t * deltaA_t,
        # in place in G (no longer needed). The saved tensors stay untouched,
        # so backward can run again (retain_graph).
        P = G
        P[1:].mul_(h[:-1])
        P[0].zero_()
        P.mul_(dA)
        # deltaA = exp(delta*A)
        delta_t = delta.permute(2, 0, 1)
        u_t = u.permute(2, 0, 1)
        gA = (P * delta_t.unsqueeze(-1)).sum((0, 1))  # (E,N)
        g_delta = P.mul_(A).sum(-1)  # (T,Bsz,E)
        g_delta = g_delta + g_du * u_t
        g_u = (g_du * delta_t).permute(1, 2, 0) + gy * D.unsqueeze(-1)
        gD = (gy * u).sum((0, 2))
        return g_u, g_delta.permute(1, 2, 0), gA, gB.transpose(0, 1), gC.transpose(0, 1), gD


# ---------------------------------------------------------------------------
# The model, laid out as mamba_ssm's MambaLMHeadModel (same parameter names).

class MambaMixer(nn.Module):
    def __init__(self, d_model, d_state, d_conv, expand, dt_rank, scan):
        super().__init__()
        E = expand * d_model
        self.E, self.N, self.K, self.R = E, d_state, d_conv, dt_rank
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, E, bias=True)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def forward(self, hidden):  # (Bsz,T,D)
        Bsz, T, _ = hidden.shape
        # 1. Gated MLP's linear projection
        projected = self.in_proj(hidden).transpose(1, 2)  # (Bsz,2E,T)
        x, gate = projected.chunk(2, dim=1)
        # 2. Causal depthwise convolution
        x = F.silu(self.conv1d(x)[..., :T])  # (Bsz,E,T)
        # 3. Input-dependent SSM parameters
        ssm_params = self.x_proj(x.transpose(1, 2))  # (Bsz,T,R+2N)
        dt, Bm, Cm = torch.split(ssm_params, [self.R, self.N, self.N], dim=-1)
        dt = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # (Bsz,E,T)
        A = -torch.exp(self.A_log.float())  # (E,N)
        # 4. Selective scan
        if self.scan == "fused":
            y = SelectiveScan.apply(x, dt, A, Bm, Cm, self.D)
        else:
            # HF transformers' slow path ("hf"; "loop" differs only in how
            # the per-step slices are taken)
            discrete_A = torch.exp(A[None, :, None, :] * dt[:, :, :, None])  # (Bsz,E,T,N)
            discrete_B = dt[:, :, :, None] * Bm[:, None, :, :].float()
            deltaB_u = discrete_B * x[:, :, :, None].float()
            ssm_state = torch.zeros(Bsz, self.E, self.N, dtype=x.dtype)
            scan_outputs = []
            if self.scan == "hf":
                # Exactly HF's indexing. Under autograd each [:, :, i] has a
                # backward that materialises a zero (Bsz,E,T,N) gradient and
                # adds into it: O(T^2) work in the backward.
                steps = ((discrete_A[:, :, i, :], deltaB_u[:, :, i, :], Cm[:, i, :]) for i in range(T))
            else:
                # unbind() slices all steps at once; its backward stacks the
                # per-step gradients in one O(T) operation.
                steps = zip(discrete_A.unbind(2), deltaB_u.unbind(2), Cm.unbind(1))
            for dA_i, dBu_i, C_i in steps:
                ssm_state = dA_i * ssm_state + dBu_i
                scan_output = torch.matmul(ssm_state, C_i.unsqueeze(-1))  # (Bsz,E,1)
                scan_outputs.append(scan_output[:, :, 0])
            y = torch.stack(scan_outputs, dim=-1)  # (Bsz,E,T)
            y = y + x * self.D[None, :, None]
        y = y * F.silu(gate)
        # 5. Final linear projection
        return self.out_proj(y.transpose(1, 2))  # (Bsz,T,D)


class Block(nn.Module):
    def __init__(self, cfg, scan):
        super().__init__()
        self.mixer = MambaMixer(cfg["d_model"], cfg["d_state"], cfg["d_conv"], cfg["expand"],
                                cfg["dt_rank"], scan)
        self.norm = nn.LayerNorm(cfg["d_model"], eps=cfg["eps"])

    def forward(self, h):
        return h + self.mixer(self.norm(h))


class Backbone(nn.Module):
    def __init__(self, cfg, scan):
        super().__init__()
        self.embedding = nn.Embedding(cfg["vocab"], cfg["d_model"])
        self.layers = nn.ModuleList([Block(cfg, scan) for _ in range(cfg["n_layer"])])
        self.norm_f = nn.LayerNorm(cfg["d_model"], eps=cfg["eps"])


class MambaLM(nn.Module):
    def __init__(self, cfg, scan):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg, scan)
        if not cfg["tied"]:
            self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab"], bias=False)

    def forward(self, ids):
        h = self.backbone.embedding(ids)
        for layer in self.backbone.layers:
            h = layer(h)
        h = self.backbone.norm_f(h)
        w = self.backbone.embedding.weight if self.cfg["tied"] else self.lm_head.weight
        return F.linear(h, w)

    def mamba_ssm_init(self, seed):
        """Initialise as mamba_ssm does (and as model.Init in Go)."""
        g = torch.Generator().manual_seed(seed)
        c = self.cfg
        L, R = c["n_layer"], c["dt_rank"]
        with torch.no_grad():
            self.backbone.embedding.weight.normal_(0, 0.02, generator=g)
            for layer in self.backbone.layers:
                m = layer.mixer
                for lin in (m.in_proj, m.x_proj, m.out_proj):
                    bound = 1 / math.sqrt(lin.in_features)
                    lin.weight.uniform_(-bound, bound, generator=g)
                m.out_proj.weight.div_(math.sqrt(L))
                bound = 1 / math.sqrt(c["d_conv"])
                m.conv1d.weight.uniform_(-bound, bound, generator=g)
                m.conv1d.bias.uniform_(-bound, bound, generator=g)
                m.dt_proj.weight.uniform_(-R ** -0.5, R ** -0.5, generator=g)
                u = torch.rand(m.E, generator=g)
                dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
                m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def next_byte_loss(logits, ids):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def bench_config(d_model=512, n_layer=6):
    return {"vocab": 256, "d_model": d_model, "n_layer": n_layer, "d_state": 16, "d_conv": 4,
            "expand": 2, "dt_rank": math.ceil(d_model / 16), "eps": 1e-5, "tied": True}


# ---------------------------------------------------------------------------
# Verification against testdata/reference/ssm_layernorm.

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        lo, hi = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=torch.float32)
        out[name] = t.reshape(info["shape"])
    return out


def verify(ref_dir):
    with open(os.path.join(ref_dir, "model", "config.json")) as f:
        mc = json.load(f)
    assert not mc["rms_norm"], "the benchmark model uses LayerNorm"
    ssm = mc["ssm_cfg"]
    D = mc["d_model"]
    cfg = {"vocab": mc["vocab_size"], "d_model": D, "n_layer": mc["n_layer"],
           "d_state": ssm["d_state"], "d_conv": ssm["d_conv"], "expand": ssm["expand"],
           "dt_rank": math.ceil(D / 16), "eps": 1e-5, "tied": mc["tie_embeddings"]}
    sd = torch.load(os.path.join(ref_dir, "model", "pytorch_model.bin"), map_location="cpu")
    exp = read_safetensors(os.path.join(ref_dir, "expected.safetensors"))
    ids = exp["input_ids"].long()
    want_loss = float(exp["loss"][0])
    ok = True
    for scan in ("hf", "loop", "fused"):
        model = MambaLM(cfg, scan)
        model.load_state_dict(sd, strict=True)
        loss = next_byte_loss(model(ids), ids)
        loss.backward()
        loss_rel = abs(float(loss) - want_loss) / abs(want_loss)
        worst = 0.0
        for name, p in model.named_parameters():
            canonical = name.replace("backbone.embedding.", "backbone.embeddings.")
            want = exp["grad/" + canonical].double()
            got = p.grad.double()
            rel = float((got - want).norm() / want.norm().clamp(min=1e-30))
            worst = max(worst, rel)
        good = loss_rel < 1e-5 and worst < 1e-4
        ok = ok and good
        print(f"verify {scan}: loss {float(loss):.7f} (want {want_loss:.7f}, rel {loss_rel:.2g}), "
              f"worst gradient rel {worst:.2g}: {'ok' if good else 'FAIL'}")
    # The hand-written backward against autograd through the loop, float64.
    torch.manual_seed(0)
    Bsz, E, T, N = 2, 5, 7, 3
    args = (torch.randn(Bsz, E, T, dtype=torch.float64),
            F.softplus(torch.randn(Bsz, E, T, dtype=torch.float64)),
            -torch.rand(E, N, dtype=torch.float64) * 2,
            torch.randn(Bsz, T, N, dtype=torch.float64),
            torch.randn(Bsz, T, N, dtype=torch.float64),
            torch.randn(E, dtype=torch.float64))
    args = tuple(a.requires_grad_() for a in args)
    good = torch.autograd.gradcheck(SelectiveScan.apply, args)
    ok = ok and good
    print(f"verify fused scan gradcheck (float64): {'ok' if good else 'FAIL'}")
    return ok


# ---------------------------------------------------------------------------

def blas_in_use():
    """The BLAS library the process has mapped (Debian's torch uses libblas.so.3)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower()}
        return ", ".join(sorted(os.path.realpath(p) for p in libs)) or "none"
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", "-B", type=int, default=4)
    ap.add_argument("--seq", "-T", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scan", choices=("loop", "fused", "hf"), default="loop")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify", metavar="DIR", help="check against a reference directory and exit")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    if a.verify:
        sys.exit(0 if verify(a.verify) else 1)

    cfg = bench_config(a.d_model, a.n_layer)
    model = MambaLM(cfg, a.scan)
    model.mamba_ssm_init(a.seed)
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(a.seed + 1)
    ids = torch.randint(0, cfg["vocab"], (a.batch, a.seq), generator=g)

    def step():
        for p in model.parameters():
            p.grad = None
        loss = next_byte_loss(model(ids), ids)
        loss.backward()
        return float(loss)

    for _ in range(a.warmup):
        loss = step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    if not (abs(loss - math.log(cfg["vocab"])) < 0.5):
        sys.exit(f"mean loss {loss}, want about ln 256")
    med = statistics.median(times)
    res = {"impl": "torch-" + a.scan, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "blas": blas_in_use(), "B": a.batch, "T": a.seq, "params": nparams, "loss": loss,
           "times_s": [round(t, 4) for t in times], "median_s": med,
           "bytes_per_s": a.batch * a.seq / med}
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
