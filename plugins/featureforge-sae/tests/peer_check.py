"""Run inside the peers' venv (benchmarks/install_peers.sh): load an exported folder with the
peer library itself and write its codes, decoding and forward output (for transcoders: the target
estimate, skip term included) of given rows.

    python peer_check.py saelens|sparsify FOLDER ROWS.safetensors OUT.safetensors
"""

import sys

import torch
from safetensors.torch import load_file, save_file


def main(fmt: str, folder: str, rows: str, out: str) -> None:
    x = load_file(rows)["x"]
    meta: dict[str, str] = {}
    with torch.no_grad():
        if fmt == "saelens":
            from sae_lens import SAE

            sae = SAE.load_from_disk(folder, device="cpu")
            codes = sae.encode(x)
            x_hat = sae.decode(codes)
            forward = sae(x)  # a skip transcoder's forward adds W_skip x
            kind = type(sae).__name__
            meta = {"hook_name": str(sae.cfg.metadata.hook_name), "model_name": str(sae.cfg.metadata.model_name),
                    "hook_name_out": str(sae.cfg.metadata.hook_name_out)}
        else:
            from sparsify import SparseCoder

            sae = SparseCoder.load_from_disk(folder, device="cpu")
            top_acts, top_indices, _ = sae.encode(x)
            codes = torch.zeros(x.shape[0], sae.num_latents).scatter_(1, top_indices, top_acts)
            x_hat = sae.decode(top_acts, top_indices)
            forward = sae(x).sae_out
            kind = type(sae).__name__
    save_file({"codes": codes.float().contiguous(), "x_hat": x_hat.float().contiguous(), "forward": forward.float().contiguous()}, out, metadata={"class": kind, **meta})


if __name__ == "__main__":
    main(*sys.argv[1:5])
