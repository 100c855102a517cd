"""The update rules of docs/ALGORITHMS.md transcribed line by line, one tensor at a time, with plain torch ops.

An oracle for the tests, written apart from sparse_rda.reference: it shares no code with the package.
State and math are float32 (as the spec demands); a low-precision parameter is read as float32 and written back
rounded, like the optimizer does.
"""

from __future__ import annotations

import math

import torch


def soft(x, t):
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def tiles(shape, block):
    """(row slice, col slice) of every (rows x cols) tile of a 2-D shape, ragged edges included."""
    rows, cols = block
    return [(slice(r, r + rows), slice(c, c + cols)) for r in range(0, shape[0], rows) for c in range(0, shape[1], cols)]


def rda_spec_step(p, grad, st, *, lr, lam, momentum_time=9.5, reweight_time=None, max_factor=500.0,
                  reweight=True, averaging=0.0, weight_decay=0.0, granularity="element", sparsify_1d=False,
                  maximize=False, penalize=True):
    w = p.detach().to(torch.float32)
    if not st:
        st.update(T=w.clone(), B=torch.zeros_like(w), A=torch.zeros_like(w), v=torch.zeros_like(w), step=0)
    st["step"] += 1
    g = grad.to(torch.float32)
    if maximize:
        g = -g
    g = g + weight_decay * w
    tau_b = momentum_time if reweight_time is None else reweight_time
    beta_b = math.exp(-lr / tau_b) if tau_b else 0.0
    beta = math.exp(-lr / momentum_time) if momentum_time else 0.0
    penalized = penalize and (w.dim() >= 2 or sparsify_1d)
    block = tuple(granularity[1:]) if isinstance(granularity, tuple) else None
    block_mode = block is not None and w.dim() == 2
    if penalized:
        if block_mode:  # a = the tile's RMS (docs/ALGORITHMS.md section 3)
            a = torch.empty_like(w)
            for rs, cs in tiles(w.shape, block):
                a[rs, cs] = w[rs, cs].pow(2).mean().sqrt()
            scale = 1.0
        elif granularity == "kernel" and w.dim() == 4:
            a = w.abs().mean(dim=(2, 3), keepdim=True).expand_as(w)
            scale = math.sqrt(w.shape[2] * w.shape[3])
        elif granularity == "channel" and w.dim() == 4:
            a = w.abs().mean(dim=(1, 2, 3), keepdim=True).expand_as(w)
            scale = math.sqrt(w.shape[1] * w.shape[2] * w.shape[3])
        else:
            a, scale = w.abs(), 1.0
        st["A"] = beta_b * st["A"] + (1 - beta_b) * a
        max_A = st["A"].max()
        if not reweight:
            om = torch.ones_like(w)
        elif max_A.item() == 0:
            om = torch.full_like(w, max_factor)
        else:
            om = max_factor / (1 + (max_factor - 1) * (st["A"] / max_A))
        om = om * scale
        st["B"] = averaging * st["B"] + lr * om
    st["T"] = averaging * st["T"] + (1 - averaging) * w
    st["v"] = beta * st["v"] + (1 - beta) * g
    st["T"] = st["T"] - lr * st["v"]
    if penalized and block_mode:  # group prox: w_tile = T_tile max(0, 1 - lam B_tile sqrt(n) / ||T_tile||)
        new_w = torch.zeros_like(w)
        st["occupancy"] = []
        for rs, cs in tiles(w.shape, block):
            T_tile = st["T"][rs, cs]
            norm = T_tile.norm()
            shrink = max(0.0, 1.0 - (lam * st["B"][rs, cs][0, 0] * T_tile.numel() ** 0.5 / norm).item()) if norm > 0 else 0.0
            new_w[rs, cs] = T_tile * shrink
            st["occupancy"].append(shrink > 0)
    elif penalized:
        new_w = soft(st["T"], lam * st["B"])
    else:  # no penalty: the iterate itself, whatever B holds (ALGORITHMS.md)
        new_w = st["T"].clone()
    with torch.no_grad():
        p.copy_(new_w)


def grda_spec_step(p, grad, st, *, lr, c=0.0, mu=0.7, penalize=True):
    if not st:
        st.update(acc=p.detach().to(torch.float32).clone(), l1=0.0, step=0)
    st["step"] += 1
    n = st["step"]
    st["acc"] = st["acc"] - lr * grad.to(torch.float32)
    if penalize:
        st["l1"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
    with torch.no_grad():
        p.copy_(soft(st["acc"], st["l1"]))
