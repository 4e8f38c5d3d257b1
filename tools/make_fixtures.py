#!/usr/bin/env python3
"""Write the PyTorch fixtures that the Rust numerics tests compare against.

The model is rebuilt here from the specification (docs/REFERENCE.md §2-3) in plain
PyTorch, with the reference's module structure so that `state_dict` keys match
(`encoder.0.weight`, ..., `nca.update_net.1.delegate.0.weight`, ..., `nca.update_net.5.bias`).
It is small (the `tiny-test` preset: Z=8, hidden 16, encoder width 4, 32x32, 2 steps per
stage) so the committed fixtures stay small.

Outputs (safetensors, float32):
  tiny_weights.safetensors  the model's parameters only (a "bare weights file")
  tiny_io.safetensors       inputs, fixed noise, expected outputs and gradients:
    input.x [3,1,32,32], input.eps [3,1,Z], input.eps_iw [3,K,Z]
    expected.mu, expected.log_sigma [3,Z], expected.state [3,Z,32,32] (decoded from
    z = mu + sigma * eps), expected.log_px_z [3], expected.kl [3], expected.loss [],
    expected.iwae [3] (K=5), grad.<param> (d loss / d param)
Expected values are computed in float64 from the float32-rounded weights and inputs.

  nondoubling_weights.safetensors, nondoubling_io.safetensors: the same for a tiny
    non-doubling model (docs/REFERENCE.md §2, §4): 28x28 input with the encoder's first
    padding 4, z in every cell of the 28x28 grid, the "simple" update net
    (3x3 conv, ELU, 1x1 conv without bias), T = 3 steps, p_update = 1.

  deconv_weights.safetensors, deconv_io.safetensors: the baseline VAE of the
    `mnist-vae-baseline` preset at the tiny widths (src/model/deconv.rs): input.x, input.eps,
    expected.logits [3,1,32,32], expected.loss, grad.<param>.

Usage: .venv/bin/python tools/make_fixtures.py tests/fixtures
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

Z, HID, ENC_W, SIZE, STEPS, N_RES = 8, 16, 4, 32, 2, 4
B, K = 3, 5


def bernoulli_channel_0(state, x):
    """Per-image log p(x | logits in channel 0), summed over the pixels."""
    return Bernoulli(logits=state[:, :1]).log_prob(x).sum(dim=(1, 2, 3))


class Residual(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.delegate = nn.Sequential(*layers)

    def forward(self, x):
        return self.delegate(x) + x


class DoublingNCA(nn.Module):
    """z on a 2x2 grid; STEPS steps; then (double, STEPS steps) until SIZE."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(Z, HID, 3, padding=1)]
        for _ in range(N_RES):
            layers.append(Residual(nn.Conv2d(HID, HID, 1), nn.ELU(), nn.Conv2d(HID, HID, 1)))
        layers.append(nn.Conv2d(HID, Z, 1))
        self.update_net = nn.Sequential(*layers)
        self.n_doublings = int(math.log2(SIZE)) - 1

    def forward(self, z):
        state = z[:, :, None, None].expand(-1, -1, 2, 2)
        for stage in range(self.n_doublings + 1):
            if stage > 0:
                state = torch.repeat_interleave(torch.repeat_interleave(state, 2, dim=2), 2, dim=3)
            for _ in range(STEPS):
                state = state + self.update_net(state)  # p_update = 1: every cell updates
        return state


class GridNCA(nn.Module):
    """z in every cell of the 28x28 grid; T steps of the simple update net."""

    def __init__(self, steps):
        super().__init__()
        self.update_net = nn.Sequential(nn.Conv2d(Z, HID, 3, padding=1), nn.ELU(), nn.Conv2d(HID, Z, 1, bias=False))
        self.steps = steps

    def forward(self, z):
        state = z[:, :, None, None].expand(-1, -1, 28, 28)
        for _ in range(self.steps):
            state = state + self.update_net(state)
        return state


class NonDoublingVNCA(nn.Module):
    def __init__(self, steps=3):
        super().__init__()
        layers, c_in = [], 1
        for i in range(5):
            c_out = ENC_W * 2**i
            pad = 4 if i == 0 else 2  # 28 -> 32 in the first convolution, as the reference
            layers += [nn.Conv2d(c_in, c_out, 5, stride=1 if i == 0 else 2, padding=pad), nn.ELU()]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * 2 * 2, 2 * Z)]
        self.encoder = nn.Sequential(*layers)
        self.nca = GridNCA(steps)

    def encode(self, x):
        q = self.encoder(x)
        return q[:, :Z], q[:, Z:]

    def log_px_z(self, state, x):
        return bernoulli_channel_0(state, x)


class VNCA(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for i in range(5):
            c_out = ENC_W * 2**i
            layers += [nn.Conv2d(c_in, c_out, 5, stride=1 if i == 0 else 2, padding=2), nn.ELU()]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * (SIZE // 16) ** 2, 2 * Z)]
        self.encoder = nn.Sequential(*layers)
        self.nca = DoublingNCA()

    def encode(self, x):
        q = self.encoder(x)
        return q[:, :Z], q[:, Z:]  # mu, log sigma

    def log_px_z(self, state, x):
        return bernoulli_channel_0(state, x)


def padded_binary_images():
    """B random binary 28x28 images zero-padded to SIZE x SIZE, as the data pipeline pads."""
    x = torch.zeros(B, 1, SIZE, SIZE, dtype=torch.float64)
    x[:, :, 2:30, 2:30] = (torch.rand(B, 1, 28, 28) < 0.3).double()
    return x


def elbo(model, x, decode, log_px_given):
    """The single-sample ELBO loss of a (float64) model on x, and its backward pass: eps is
    drawn here (after x, in the fixtures' order); `decode(z)` is the decoder's output,
    `log_px_given(out, x)` the per-image log p(x|z). Returns every intermediate by name."""
    eps = torch.randn(B, 1, Z).float().double()
    mu, log_sigma = model.encode(x)
    q = Normal(mu, log_sigma.exp())
    out = decode(mu + log_sigma.exp() * eps[:, 0])
    log_px_z = log_px_given(out, x)
    kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(dim=1)
    loss = (-log_px_z + kl).mean()
    model.zero_grad()
    loss.backward()
    return {"eps": eps, "mu": mu, "log_sigma": log_sigma, "out": out, "log_px_z": log_px_z,
            "kl": kl, "loss": loss}


def save_io(io, model, path):
    """Inputs and expected values, and d loss / d param as grad.<name>, in float32."""
    io = {k: v.detach().float().contiguous() for k, v in io.items()}
    io.update({f"grad.{n}": p.grad.detach().float() for n, p in model.named_parameters()})
    save_file(io, path)


def save_weights(model, path):
    weights = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, path)


def nondoubling(out_dir):
    torch.manual_seed(4321)
    model = NonDoublingVNCA()
    with torch.no_grad():
        model.nca.update_net[-1].weight.normal_(0, 0.05)
    save_weights(model, os.path.join(out_dir, "nondoubling_weights.safetensors"))
    model = model.double()
    x = (torch.rand(B, 1, 28, 28) < 0.3).double()
    r = elbo(model, x, model.nca, model.log_px_z)
    io = {"input.x": x, "input.eps": r["eps"], "expected.mu": r["mu"],
          "expected.log_sigma": r["log_sigma"], "expected.state": r["out"],
          "expected.loss": r["loss"]}
    save_io(io, model, os.path.join(out_dir, "nondoubling_io.safetensors"))
    print(f"non-doubling loss {r['loss'].item():.6f}")


class DeconvVAE(nn.Module):
    """The baseline VAE (src/model/deconv.rs): the VNCA's encoder, and a decoder of a
    linear layer to 16w x 2 x 2, four 5x5 transposed convolutions (stride 2, padding 2,
    output padding 1) halving the channels, ELU after each, and a 5x5 transposed
    convolution (stride 1, padding 2) to one channel of Bernoulli logits."""

    def __init__(self):
        super().__init__()
        self.encoder = VNCA().encoder
        c0 = ENC_W * 16
        ups = [nn.ConvTranspose2d(c0 >> i, c0 >> (i + 1), 5, stride=2, padding=2, output_padding=1)
               for i in range(4)]
        self.decoder = nn.ModuleList([nn.Linear(Z, c0 * 4), *ups,
                                      nn.ConvTranspose2d(ENC_W, 1, 5, stride=1, padding=2)])

    def encode(self, x):
        q = self.encoder(x)
        return q[:, :Z], q[:, Z:]

    def decode(self, z):
        h = F.elu(self.decoder[0](z)).view(z.shape[0], ENC_W * 16, 2, 2)
        for up in self.decoder[1:5]:
            h = F.elu(up(h))
        return self.decoder[5](h)


def deconv(out_dir):
    torch.manual_seed(777)
    model = DeconvVAE()
    save_weights(model, os.path.join(out_dir, "deconv_weights.safetensors"))
    model = model.double()
    x = padded_binary_images()
    r = elbo(model, x, model.decode, bernoulli_channel_0)
    io = {"input.x": x, "input.eps": r["eps"], "expected.logits": r["out"],
          "expected.loss": r["loss"]}
    save_io(io, model, os.path.join(out_dir, "deconv_io.safetensors"))
    print(f"deconv loss {r['loss'].item():.6f}")


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    nondoubling(out_dir)
    deconv(out_dir)
    torch.manual_seed(1234)
    model = VNCA()
    with torch.no_grad():
        # The real init zeroes the last layer (NCA = identity); give it weights so the
        # fixture exercises every step of the decoder.
        model.nca.update_net[-1].weight.normal_(0, 0.05)
        model.nca.update_net[-1].bias.normal_(0, 0.05)
    save_weights(model, os.path.join(out_dir, "tiny_weights.safetensors"))

    model = model.double()
    x = padded_binary_images()
    r = elbo(model, x, model.nca, model.log_px_z)
    mu, log_sigma = r["mu"], r["log_sigma"]
    # Drawn after eps (the forward and backward passes draw nothing in between).
    eps_iw = torch.randn(B, K, Z).float().double()
    with torch.no_grad():
        zs = mu[:, None] + log_sigma.exp()[:, None] * eps_iw  # [B, K, Z]
        st = model.nca(zs.reshape(B * K, Z))
        lpx = model.log_px_z(st, x.repeat_interleave(K, dim=0)).reshape(B, K)
        lpz = Normal(0.0, 1.0).log_prob(zs).sum(-1)
        lqz = Normal(mu[:, None], log_sigma.exp()[:, None]).log_prob(zs).sum(-1)
        iwae = torch.logsumexp(lpx + lpz - lqz, dim=1) - math.log(K)

    io = {
        "input.x": x,
        "input.eps": r["eps"],
        "input.eps_iw": eps_iw,
        "expected.mu": mu,
        "expected.log_sigma": log_sigma,
        "expected.state": r["out"],
        "expected.log_px_z": r["log_px_z"],
        "expected.kl": r["kl"],
        "expected.loss": r["loss"],
        "expected.iwae": iwae,
    }
    save_io(io, model, os.path.join(out_dir, "tiny_io.safetensors"))
    print(f"loss {r['loss'].item():.6f}  iwae {iwae.tolist()}  ->  {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
