#!/usr/bin/env python3
"""Convert a checkpoint saved by the reference code (github.com/rasmusbergpalm/vnca,
`model.save(fn)`: a torch.save'd dict with 'model_state_dict', 'optimizer_state_dict',
'batch_idx') into a bare safetensors weights file that `vnca eval` loads unchanged:

    .venv/bin/python tools/convert_reference_checkpoint.py latest reference.safetensors
    vnca eval --checkpoint reference.safetensors --preset mnist-doubling

The parameter names are kept exactly (`encoder.0.weight`, ..., `nca.update_net.5.bias`).
"""
import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    ck = torch.load(src, map_location="cpu", weights_only=True)
    state = ck.get("model_state_dict", ck) if isinstance(ck, dict) else ck
    # nn.DataParallel (the CelebA revisions) prefixes 'module.' inside the NCA.
    tensors = {k.replace("nca.module.", "nca."): v.float().contiguous() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, dst)
    total = sum(v.numel() for v in tensors.values())
    print(f"wrote {len(tensors)} tensors ({total} parameters) to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
