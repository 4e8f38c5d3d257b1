#!/usr/bin/env python3
"""Write the PyTorch fixture of a colour doubling VNCA, as the reference's doubling colour
runs compute it (rasmusbergpalm/vnca, vae-nca.py `forward` at 641588a, 8d1ee6e, 028b599):

    x = x * 2 - 1                 # [0, 1] -> [-1, 1], before the encoder
    q(z|x) = encoder(x)           # (mu, log sigma)
    p(x|z) = DML(state, x)        # PixelCNN++'s loss, which expects x in [-1, 1]

The deterministic quantities of `vnca eval --posterior-mean` are written: per image,
log p(x | z = mu) (the decoder grown from the posterior mean; p_update = 1, so no noise)
and KL(q(z|x) || N(0, I)). The model is tiny (Z = 12, hidden 16, encoder width 4,
16x16 RGB, 2 steps per stage, one mixture component) so the committed files stay small.

The DML log-probability is the independent re-implementation of tools/make_dml_fixtures.py,
which takes x in [0, 1] and applies the same `2x - 1` itself: identical to the reference
feeding the already rescaled x to PixelCNN++'s loss.

Outputs (safetensors):
  colour_weights.safetensors  the parameters (reference state_dict names)
  colour_io.safetensors       input.x [3,3,16,16] (multiples of 1/255, 0 and 1 included),
                              expected.mu / expected.log_sigma [3,Z] (encoder fed 2x - 1),
                              expected.mu_unit [3,Z] (the same weights fed x in [0, 1]),
                              expected.log_px_mu [3], expected.kl [3] (computed in float64, stored as float32)

Usage: .venv/bin/python tools/make_colour_fixtures.py tests/fixtures
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_dml_fixtures import log_prob as dml_log_prob  # noqa: E402
from make_fixtures import Residual  # noqa: E402  (the reference's residual block)

Z, HID, ENC_W, SIZE, STEPS, N_RES, N_MIX = 12, 16, 4, 16, 2, 4, 1
B = 3


class DoublingNCA(nn.Module):
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
                state = state + self.update_net(state)
        return state


class ColourVNCA(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for i in range(5):
            c_out = ENC_W * 2**i
            layers += [nn.Conv2d(c_in, c_out, 5, stride=1 if i == 0 else 2, padding=2), nn.ELU()]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * (SIZE // 16) ** 2, 2 * Z)]
        self.encoder = nn.Sequential(*layers)
        self.nca = DoublingNCA()

    def encode(self, x_encoder):
        q = self.encoder(x_encoder)
        return q[:, :Z], q[:, Z:]  # mu, log sigma


def main(out_dir):
    torch.manual_seed(11)
    model = ColourVNCA()
    with torch.no_grad():
        # Non-zero last layer, so the decoder does something (the reference starts it at 0).
        model.nca.update_net[-1].weight.normal_(0, 0.05)
        model.nca.update_net[-1].bias.normal_(0, 0.05)
    weights = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(out_dir, "colour_weights.safetensors"))

    gen = torch.Generator().manual_seed(5)
    levels = torch.randint(0, 256, (B, 3, SIZE, SIZE), generator=gen)
    levels[0, :, :2] = 0  # both edge bins of the DML are exercised
    levels[1, :, -2:] = 255
    x = (levels.float() / 255.0).contiguous()

    m64 = ColourVNCA().double()
    m64.load_state_dict({k: v.double() for k, v in weights.items()})
    with torch.no_grad():
        x64 = x.double()
        mu, log_sigma = m64.encode(x64 * 2 - 1)  # the reference's doubling colour forward
        mu_unit, _ = m64.encode(x64)
        state = m64.nca(mu)  # [B, Z, S, S], grown from the posterior mean
        log_px_mu = dml_log_prob(state, x64, N_MIX)  # [B]
        kl = (-log_sigma + (torch.exp(2 * log_sigma) + mu**2) / 2 - 0.5).sum(dim=1)
    io = {
        "input.x": x,
        "expected.mu": mu.float().contiguous(),
        "expected.log_sigma": log_sigma.float().contiguous(),
        "expected.mu_unit": mu_unit.float().contiguous(),
        "expected.log_px_mu": log_px_mu.float().contiguous(),
        "expected.kl": kl.float().contiguous(),
    }
    save_file(io, os.path.join(out_dir, "colour_io.safetensors"))
    print("log p(x|mu):", log_px_mu.tolist(), "KL:", kl.tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
