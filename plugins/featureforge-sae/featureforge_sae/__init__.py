"""featureforge-sae: sparse-autoencoder trainers for featureforge.

* ``topk`` – TopK SAE with AuxK (Gao et al. 2024), fused sparse kernels;
* ``batchtopk`` – BatchTopK SAE with a learned inference threshold (Bussmann et al. 2024);
* ``relu`` – ReLU SAE with decoder-norm-weighted L1 (Anthropic, April 2024 update).

All three export to (and import from) SAELens' layout; ``topk`` also to sparsify's. The
package is a featureforge plugin (entry point ``sae`` in the group ``featureforge``): use it
through ``featureforge train --trainer topk ...`` or ``featureforge.train("topk", ...)``.
"""

from .options import BatchTopKOptions, ReLUOptions, TopKOptions
from .trainers import BatchTopKTrainer, ReLUTrainer, TopKTrainer

__version__ = "0.1.0"

__all__ = [
    "BatchTopKOptions",
    "BatchTopKTrainer",
    "ReLUOptions",
    "ReLUTrainer",
    "TopKOptions",
    "TopKTrainer",
]
