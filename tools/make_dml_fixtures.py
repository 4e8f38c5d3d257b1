#!/usr/bin/env python3
"""Write the PyTorch fixtures for the discretized logistic mixture likelihood (DML).

The likelihood is re-implemented here from the specification (docs/REFERENCE.md §3, the
PixelCNN++ `discretized_mix_logistic_loss` / `sample_from_discretized_mix_logistic`
layout), independently of the Rust code in src/likelihood/logistic_mixture.rs:

  params [N, C >= 10K, H, W], read channel-last per pixel: [0:K) mixture logits, the
  remaining 9K reshaped to (3 colours, 3K); for colour c: [0:K) means, [K:2K) log-scales
  (clamped >= -7), [2K:3K) raw coefficients -> tanh (R slot: alpha (G|R), G slot: beta
  (B|R), B slot: gamma (B|G)). x in {0, 1/255, ..., 1} is rescaled to 2x - 1.

Outputs (safetensors): tests/fixtures/dml.safetensors with, for K in {1, 4}:
  k{K}.params [N, 10K+2, H, W] f32   (two trailing channels the likelihood must ignore)
  k{K}.x      [N, 3, H, W] f32       (multiples of 1/255, including 0 and 1)
  k{K}.log_prob [N] f64              (computed in float64 from the f32-rounded inputs)
  k{K}.grad   [N, 10K+2, H, W] f64   (d sum(log_prob) / d params)
and one sampling case with fixed uniforms (K = 4):
  sample.params [N, 41, H, W] f32, sample.u_mix [N, H, W, K] f32 (Gumbel-max draws),
  sample.u_logistic [N, H, W, 3] f32 (the logistic draws, raw in [0, 1)),
  sample.x [N, 3, H, W] f64 (the expected sample in [0, 1]).
The raw uniforms u in [0, 1) are mapped to 1e-5 + (1 - 2e-5) u, as torch's
`uniform_(1e-5, 1 - 1e-5)` in the reference.

The script checks that every branch of the per-channel log-probability is taken (and
prints the counts), and that no element sits so close to the `cdf_delta > 1e-5` or the
Gumbel-max decision boundary that float32 could decide it differently.

Usage: .venv/bin/python tools/make_dml_fixtures.py tests/fixtures
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

N, H, W = 3, 3, 5  # H != W so that a transposed layout cannot pass
EXTRA = 2  # state channels beyond the first 10K, ignored by the likelihood
BRANCHES = ("x=0 edge", "x=255 edge", "log cdf_delta", "pdf at mid (low prob)")


def unpack(params, k):
    """params [N, C, H, W] -> logits [N,H,W,K], means/log_s/coeffs [N,H,W,3,K]."""
    p = params[:, : 10 * k].permute(0, 2, 3, 1)  # [N, H, W, 10K]
    logits = p[..., :k]
    rest = p[..., k:].reshape(*p.shape[:3], 3, 3 * k)
    means = rest[..., :k]
    log_s = torch.clamp(rest[..., k : 2 * k], min=-7.0)
    coeffs = torch.tanh(rest[..., 2 * k :])
    return logits, means, log_s, coeffs


def per_channel(params, x, k):
    """The per-(pixel, colour, component) log-probabilities and which branch each took."""
    logits, means, log_s, coeffs = unpack(params, k)
    xs = (2.0 * x - 1.0).permute(0, 2, 3, 1).unsqueeze(-1)  # [N, H, W, 3, 1]
    r, g = xs[..., 0, :], xs[..., 1, :]
    mu = torch.stack(
        [
            means[..., 0, :],
            means[..., 1, :] + coeffs[..., 0, :] * r,
            means[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g,
        ],
        dim=-2,
    )  # [N, H, W, 3, K]
    xe = xs.expand_as(mu)
    s = torch.exp(log_s)
    plus_in = (xe - mu + 1.0 / 255.0) / s
    min_in = (xe - mu - 1.0 / 255.0) / s
    mid_in = (xe - mu) / s
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    low_edge = plus_in - F.softplus(plus_in)
    high_edge = -F.softplus(min_in)
    log_delta = torch.log(torch.clamp(cdf_delta, min=1e-12))
    log_mid = mid_in - log_s - 2.0 * F.softplus(mid_in) - math.log(127.5)
    big = cdf_delta > 1e-5
    lp = torch.where(
        xe < -0.999, low_edge, torch.where(xe > 0.999, high_edge, torch.where(big, log_delta, log_mid))
    )
    branch = torch.where(
        xe < -0.999,
        torch.zeros_like(xe, dtype=torch.long),
        torch.where(
            xe > 0.999,
            torch.ones_like(xe, dtype=torch.long),
            torch.where(big, torch.full_like(xe, 2, dtype=torch.long), torch.full_like(xe, 3, dtype=torch.long)),
        ),
    )
    interior = (xe.abs() <= 0.999).detach()
    return lp, logits, branch, cdf_delta.detach(), interior


def log_prob(params, x, k):
    lp, logits, _, _, _ = per_channel(params, x, k)
    per_pixel = torch.logsumexp(F.log_softmax(logits, dim=-1) + lp.sum(dim=-2), dim=-1)
    return per_pixel.sum(dim=(1, 2))  # [N]


def make_params(k, gen):
    """Random parameters with extreme log-scales (-9, -7, +3) and large-magnitude means."""
    c = 10 * k + EXTRA
    p = torch.randn(N, c, H, W, generator=gen, dtype=torch.float64) * 0.8
    view = p[:, : 10 * k].permute(0, 2, 3, 1)  # [N, H, W, 10K], a view into p
    view[..., :k] = torch.randn(N, H, W, k, generator=gen, dtype=torch.float64) * 1.5
    rest = view[..., k : 10 * k].reshape(N, H, W, 3, 3 * k)  # a copy: write back below
    rest[..., :k] = torch.rand(N, H, W, 3, k, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    rest[..., k : 2 * k] = torch.rand(N, H, W, 3, k, generator=gen, dtype=torch.float64) * 5.5 - 5.0
    # Large-magnitude means on a few (pixel, colour, component) entries.
    for n, i, j, c_, m, v in [(0, 0, 1, 0, 0, 25.0), (1, 2, 3, 2, k - 1, -40.0), (2, 1, 4, 1, 0, 12.0)]:
        rest[n, i, j, c_, m] = v
    # Extreme log-scales: -7 (the clamp, exactly), -9 (clamped away), +3 (very wide).
    for n, i, j, c_, m, v in [(0, 1, 1, 0, 0, -7.0), (0, 2, 0, 1, k - 1, -9.0), (1, 0, 0, 2, 0, 3.0),
                              (2, 2, 2, 0, k - 1, -7.0), (2, 0, 3, 2, 0, -9.0), (1, 1, 2, 1, 0, 3.0),
                              (1, 2, 3, 2, k - 1, -7.0)]:
        rest[n, i, j, c_, k + m] = v
    rest[..., 2 * k :] = torch.randn(N, H, W, 3, k, generator=gen, dtype=torch.float64)
    view[..., k : 10 * k] = rest.reshape(N, H, W, 9 * k)
    return p.float().double()


def make_x(params, k, gen):
    """Pixels: random levels, forced 0 / 255 / mid-range, and the bin nearest a mean."""
    x = torch.randint(0, 256, (N, 3, H, W), generator=gen).double()
    x[:, :, 0, 0] = 0.0
    x[:, :, 0, 2] = 255.0
    x[:, 0, 1, 0], x[:, 1, 1, 0], x[:, 2, 1, 0] = 127.0, 128.0, 100.0
    x[0, 0, 2, 4], x[1, 1, 2, 4], x[2, 2, 2, 4] = 0.0, 255.0, 0.0  # mixed edges in one pixel
    _, means, _, coeffs = unpack(params, k)
    # Near the means of component 0, colour by colour through the coupling.
    for n, i, j in [(0, 1, 1), (1, 1, 3), (2, 2, 2), (0, 2, 1), (1, 0, 4)]:
        m = means[n, i, j, :, 0]
        a, b, g = coeffs[n, i, j, :, 0]
        r_ = m[0].clamp(-1, 1)
        x[n, 0, i, j] = torch.round((r_ + 1) / 2 * 255)
        r_ = 2 * x[n, 0, i, j] / 255 - 1
        g_ = (m[1] + a * r_).clamp(-1, 1)
        x[n, 1, i, j] = torch.round((g_ + 1) / 2 * 255)
        g_ = 2 * x[n, 1, i, j] / 255 - 1
        b_ = (m[2] + b * r_ + g * g_).clamp(-1, 1)
        x[n, 2, i, j] = torch.round((b_ + 1) / 2 * 255)
    return (x / 255.0).float().double()


def likelihood_case(k, seed):
    gen = torch.Generator().manual_seed(seed)
    while True:
        params = make_params(k, gen)
        x = make_x(params, k, gen)
        _, _, branch, cdf_delta, interior = per_channel(params, x, k)
        # Keep clear of the float32-sensitive threshold: no interior element within 5%.
        ratio = cdf_delta[interior] / 1e-5
        if (ratio - 1).abs().min() > 0.05:
            break
        print(f"K={k}: an element sits at the cdf_delta threshold; redrawing")
    counts = [int((branch == b).sum()) for b in range(4)]
    print(f"K={k}: branch counts (per pixel x colour x component): "
          + ", ".join(f"{name}: {c}" for name, c in zip(BRANCHES, counts)))
    assert all(c > 0 for c in counts), f"K={k}: a branch is never taken: {counts}"
    params.requires_grad_(True)
    lp = log_prob(params, x, k)
    (grad,) = torch.autograd.grad(lp.sum(), params)
    assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
    assert (grad[:, 10 * k :] == 0).all()
    print(f"K={k}: log_prob {lp.tolist()}")
    return {
        f"k{k}.params": params.detach().float().contiguous(),
        f"k{k}.x": x.float().contiguous(),
        f"k{k}.log_prob": lp.detach().contiguous(),
        f"k{k}.grad": grad.contiguous(),
    }


def sample_case(k=4, seed=7):
    gen = torch.Generator().manual_seed(seed)
    c = 10 * k + 1
    while True:
        params = (torch.randn(N, c, H, W, generator=gen, dtype=torch.float64) * 0.7).float().double()
        for col in range(3):  # log-scales in [-4, -1] so that most draws stay inside [-1, 1]
            ch = k + 3 * k * col + k
            params[:, ch : ch + k] = (torch.rand(N, k, H, W, generator=gen, dtype=torch.float64) * 3 - 4).float()
        # Wide scales on a few entries so that clamping to [-1, 1] happens.
        params[0, k + k : k + 2 * k, 0, 0] = 1.5
        params[1, k + 3 * k + k : k + 3 * k + 2 * k, 1, 1] = 2.0
        params[2, k : k + k, 2, 3] = 3.0  # R means far above 1 -> R clamps to 1
        u_mix = torch.rand(N, H, W, k, generator=gen).float()
        u_log = torch.rand(N, H, W, 3, generator=gen).float()
        logits, means, log_s, coeffs = unpack(params, k)
        um = 1e-5 + (1 - 2e-5) * u_mix.double()
        score = logits - torch.log(-torch.log(um))
        top2 = score.topk(2, dim=-1).values
        if (top2[..., 0] - top2[..., 1]).min() > 1e-3:  # no near-ties for float32
            break
    sel = score.argmax(dim=-1)  # [N, H, W]
    idx = sel[..., None, None].expand(N, H, W, 3, 1)
    mu = means.gather(-1, idx)[..., 0]  # [N, H, W, 3]
    ls = log_s.gather(-1, idx)[..., 0]
    co = coeffs.gather(-1, idx)[..., 0]
    ul = 1e-5 + (1 - 2e-5) * u_log.double()
    v = mu + torch.exp(ls) * (torch.log(ul) - torch.log(1 - ul))
    x0 = v[..., 0].clamp(-1, 1)
    x1 = (v[..., 1] + co[..., 0] * x0).clamp(-1, 1)
    x2 = (v[..., 2] + co[..., 1] * x0 + co[..., 2] * x1).clamp(-1, 1)
    x = (torch.stack([x0, x1, x2], dim=1) + 1) / 2  # [N, 3, H, W]
    n_clamped = int(((x == 0) | (x == 1)).sum())
    print(f"sample: components chosen {torch.bincount(sel.flatten(), minlength=k).tolist()}, "
          f"clamped channels {n_clamped}")
    assert n_clamped > 0
    return {
        "sample.params": params.float().contiguous(),
        "sample.u_mix": u_mix.contiguous(),
        "sample.u_logistic": u_log.contiguous(),
        "sample.x": x.contiguous(),
    }


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    tensors.update(likelihood_case(1, seed=101))
    tensors.update(likelihood_case(4, seed=404))
    tensors.update(sample_case())
    path = os.path.join(out_dir, "dml.safetensors")
    save_file(tensors, path)
    print(f"-> {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
