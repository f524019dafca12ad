"""featureforge-sae: sparse-autoencoder trainers for featureforge.

* ``topk`` – TopK SAE with AuxK (Gao et al. 2024), fused sparse kernels;
* ``batchtopk`` – BatchTopK SAE with a learned inference threshold (Bussmann et al. 2024);
* ``relu`` – ReLU SAE with decoder-norm-weighted L1 (Anthropic, April 2024 update);
* ``jumprelu`` – JumpReLU SAE with per-latent thresholds and an L0 penalty (Rajamanoharan et al. 2024);
* ``matryoshka`` – Matryoshka BatchTopK SAE: nested latent prefixes each reconstruct (Bussmann et al. 2025);
* ``gsae`` – TopK whose selection is steered by cached gradients (Olmo et al. 2024);
* ``transcoder`` – (skip) transcoder from one site to another, TopK / BatchTopK / JumpReLU (Paulo et al. 2025);
* ``crosscoder`` – one TopK / BatchTopK dictionary reading and writing several sites (Lindsey et al. 2024).

All autoencoders export to (and import from) SAELens' layout; ``topk`` and ``gsae`` also to sparsify's;
transcoders to SAELens' and sparsify's transcoder layouts. The
package is a featureforge plugin (entry point ``sae`` in the group ``featureforge``): use it
through ``featureforge train --trainer topk ...`` or ``featureforge.train("topk", ...)``.
"""

from .coders import CrosscoderTrainer, TranscoderTrainer
from .jumprelu import JumpReLUTrainer
from .matryoshka import MatryoshkaTrainer
from .options import (BatchTopKOptions, CrosscoderOptions, JumpReLUOptions, MatryoshkaOptions, ReLUOptions, TopKOptions,
                      TranscoderOptions)
from .trainers import BatchTopKTrainer, ReLUTrainer, TopKTrainer

__version__ = "0.1.0"

__all__ = [
    "BatchTopKOptions",
    "BatchTopKTrainer",
    "CrosscoderOptions",
    "CrosscoderTrainer",
    "JumpReLUOptions",
    "JumpReLUTrainer",
    "MatryoshkaOptions",
    "MatryoshkaTrainer",
    "ReLUOptions",
    "ReLUTrainer",
    "TopKOptions",
    "TopKTrainer",
    "TranscoderOptions",
    "TranscoderTrainer",
]
