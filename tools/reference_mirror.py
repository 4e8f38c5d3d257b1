#!/usr/bin/env python3
"""The reference implementation's way of running the doubling-MNIST VNCA, for `vnca bench`.

Written from the specification of the reference code (docs/REFERENCE.md §2-4; rasmusbergpalm/vnca
at 036578c), not copied from it. It keeps what decides the reference's speed and memory:
  - NCHW tensors and nn.Conv2d for every layer;
  - every NCA step wrapped in torch.utils.checkpoint (reentrant, as in PyTorch 1.9), so the
    backward pass recomputes each step;
  - z broadcast to 2x2, `repeat_interleave` twice per doubling, a Bernoulli(p_update=1) mask
    drawn and multiplied at every step;
  - the loss through torch.distributions (Normal.rsample, Bernoulli.log_prob, kl_divergence);
  - Adam(lr=1e-4) and clip_grad_norm_(10).
Data loading is not timed (random binary images stand in for a batch).

Usage: python tools/reference_mirror.py {train,iwae} --batch B --repeats R --warmup W
       [--z 256 --hid 256 --enc 32 --threads T --iw-samples 128 --images N]
       [--device cpu|cuda[:N] --precision fp32|tf32|bf16]
--precision sets what `vnca bench --precision` sets for ours (src/precision.rs): fp32 turns
TF32 off in cuBLAS and cuDNN; tf32 turns it on, with cudnn.benchmark; bf16 runs the forward
pass under torch.autocast(dtype=bfloat16), with cudnn.benchmark. On CUDA each timed repeat
ends with torch.cuda.synchronize().
Prints one JSON line: per-repeat seconds, and peak RSS in bytes (ru_maxrss).
"""
import argparse
import json
import resource
import time
import warnings

import numpy as np
import torch as t
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence
from torch.utils.checkpoint import checkpoint


class Residual(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.delegate = nn.Sequential(*layers)

    def forward(self, x):
        return self.delegate(x) + x


class MitosisNCA(nn.Module):
    def __init__(self, update_net, n_duplications, steps, p_update):
        super().__init__()
        self.update_net = update_net
        self.n_duplications, self.steps, self.p_update = n_duplications, steps, p_update

    def step(self, state, mask):
        return state + self.update_net(state) * mask

    def _mask(self, state):
        shape = (state.shape[0], 1, state.shape[2], state.shape[3])
        return (t.rand(shape, device=state.device) < self.p_update).to(t.float32)

    def forward(self, state):
        states = [state]
        for _ in range(self.steps):
            state = checkpoint(self.step, state, self._mask(state), use_reentrant=True)
            states.append(state)
        for _ in range(self.n_duplications):
            state = t.repeat_interleave(t.repeat_interleave(state, 2, dim=2), 2, dim=3)
            states.append(state)
            for _ in range(self.steps):
                state = checkpoint(self.step, state, self._mask(state), use_reentrant=True)
                states.append(state)
        return states


class VAENCA(nn.Module):
    def __init__(self, z=256, hid=256, size=32, enc=32):
        super().__init__()
        self.z_size, self.h = z, size
        layers, c = [], 1
        for i in range(5):
            layers += [nn.Conv2d(c, enc * 2**i, 5, padding=2, stride=1 if i == 0 else 2), nn.ELU()]
            c = enc * 2**i
        layers += [nn.Flatten(), nn.Linear(c * (size // 16) ** 2, 2 * z)]
        self.encoder = nn.Sequential(*layers)
        net = [nn.Conv2d(z, hid, 3, padding=1)]
        net += [Residual(nn.Conv2d(hid, hid, 1), nn.ELU(), nn.Conv2d(hid, hid, 1)) for _ in range(4)]
        net += [nn.Conv2d(hid, z, 1)]
        update_net = nn.Sequential(*net)
        update_net[-1].weight.data.fill_(0.0)
        update_net[-1].bias.data.fill_(0.0)
        self.nca = MitosisNCA(update_net, int(np.log2(size)) - 1, 8, 1.0)
        self.p_z = None  # set by to_device

    def to_device(self, device):
        self.p_z = Normal(t.zeros(self.z_size, device=device), t.ones(self.z_size, device=device))
        return self.to(device)

    def encode(self, x):
        q = self.encoder(x)
        return Normal(loc=q[:, : self.z_size], scale=t.exp(q[:, self.z_size :]))

    def decode(self, z):
        bs, ns, zs = z.shape
        state = z.reshape((-1, self.z_size)).unsqueeze(2).unsqueeze(3).expand(-1, -1, 2, 2)
        states = self.nca(state)
        logits = states[-1][:, :1, :, :].reshape((bs, ns, -1))
        return Bernoulli(logits=logits), states

    def forward(self, x, n_samples, loss_fn):
        x_flat = x.reshape(x.shape[0], -1)
        q = self.encode(x)
        z = q.rsample((n_samples,)).permute((1, 0, 2))
        p, _ = self.decode(z)
        return loss_fn(x_flat, p, q, z)

    def elbo(self, x, p, q, z):
        logpx = p.log_prob(x.unsqueeze(1).expand_as(p.mean)).sum(dim=2).mean(dim=1)
        kl = kl_divergence(q, self.p_z).sum(dim=1)
        return (-logpx).mean() + kl.mean()

    def iwae(self, x, p, q, z):
        logpx = p.log_prob(x.unsqueeze(1).expand_as(p.mean)).sum(dim=2)
        logpz = self.p_z.log_prob(z).sum(dim=2)
        logqz = q.log_prob(z.permute((1, 0, 2))).sum(dim=2).permute((1, 0))
        return -(t.logsumexp(logpx + logpz - logqz, dim=1) - np.log(z.shape[1])).mean()


def main():
    # checkpoint() under no_grad (evaluation) warns on every step; the reference ran it that way.
    warnings.filterwarnings("ignore", message="None of the inputs have requires_grad")
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "iwae"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--z", type=int, default=256)
    ap.add_argument("--hid", type=int, default=256)
    ap.add_argument("--enc", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--iw-samples", type=int, default=128)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    # vnca flushes denormal floats to zero on the CPU unless --keep-denormals: the same here.
    ap.add_argument("--flush-denormal", action="store_true")
    a = ap.parse_args()
    dev = t.device(a.device)
    cuda = dev.type == "cuda"
    t.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    t.backends.cudnn.allow_tf32 = a.precision == "tf32"
    t.backends.cudnn.benchmark = a.precision != "fp32"

    def autocast():
        return t.autocast(dev.type, dtype=t.bfloat16, enabled=a.precision == "bf16")

    def sync():
        if cuda:
            t.cuda.synchronize(dev)

    t.set_flush_denormal(a.flush_denormal)
    if a.threads:
        t.set_num_threads(a.threads)
    t.manual_seed(0)
    model = VAENCA(a.z, a.hid, enc=a.enc).to_device(dev)
    times = []
    if a.what == "train":
        opt = t.optim.Adam(model.parameters(), lr=1e-4)
        x = (t.rand(a.batch, 1, 32, 32, device=dev) < 0.2).float()
        for i in range(a.warmup + a.repeats):
            t0 = time.perf_counter()
            opt.zero_grad()
            with autocast():
                loss = model(x, 1, model.elbo)
            loss.backward()
            t.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    else:
        model.train(False)
        xs = (t.rand(a.images, 1, 1, 32, 32, device=dev) < 0.2).float()
        with t.no_grad(), autocast():
            for i in range(a.warmup + a.repeats):
                t0 = time.perf_counter()
                for x in xs:  # one image at a time with K samples, as the reference's test()
                    model(x, a.iw_samples, model.iwae)
                sync()
                if i >= a.warmup:
                    times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"what": a.what, "seconds": times, "peak_rss_bytes": rss, "torch": t.__version__,
                      "threads": t.get_num_threads()}))


if __name__ == "__main__":
    main()
