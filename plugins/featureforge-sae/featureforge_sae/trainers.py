"""The ``topk``, ``batchtopk`` and ``relu`` trainers.

Each builds a dictionary, gives its loss for a batch and keeps the decoder in shape around the
optimiser step; the featureforge loop owns everything else (data, Adam, schedule, autocast,
checkpoints, DDP). Losses (all in training units, where rows have mean squared norm d_in):

* topk / batchtopk: FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch, the
  normalised MSE Gao et al. (2024) train and report (sparsify's ``fvu``), plus
  ``aux_coef * AuxK``: the top ``k_aux`` pre-activations of latents that have not fired for
  ``dead_after`` rows reconstruct the residual ``e = x - x_hat`` (detached), normalised as
  ``||e - e_hat||^2 / ||e - mean(e)||^2`` and scaled by ``min(1, n_dead / k_aux)`` (sparsify's
  damping when few latents are dead). AuxK is skipped while no latent is dead.
* relu: ``mean_rows ||x - x_hat||^2 + lambda * mean_rows sum_i z_i ||W_dec,i||`` (Anthropic's
  April 2024 update), lambda warming up linearly over ``l1_warmup_rows``.

Heavy imports (the dictionaries, kernels) happen inside methods so that listing plugins stays
cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featureforge import DictionaryTrainer
from featureforge import StepOutput, TrainState

from .options import BatchTopKOptions, ReLUOptions, TopKOptions

#: AuxK's horizon where neither the options nor the loop give one (a trainer used outside the loop).
DEFAULT_DEAD_AFTER = 10_000_000

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ._models import BatchTopKSAE, ReLUSAE, TopKSAE


def geometric_median(points: "torch.Tensor", iters: int = 200, tol: float = 1e-6) -> "torch.Tensor":
    """Geometric median of the rows of ``points`` by Weiszfeld's iterations, started at the mean."""
    import torch

    x = points.float()
    y = x.mean(0)
    for _ in range(iters):
        dist = (x - y).norm(dim=1).clamp_min(1e-8)
        w = dist.reciprocal()
        new = (w @ x) / w.sum()
        moved = (new - y).norm()
        y = new
        if moved <= tol * max(float(y.norm()), 1.0):
            break
    return y.to(points.dtype) if torch.is_floating_point(points) else y


def torch_dot(flat: "torch.Tensor") -> "torch.Tensor":
    """``flat . flat``: the squared norm of a flat tensor (one BLAS call, with autograd)."""
    import torch

    return torch.dot(flat, flat)


def warmed_up(coef: float, rows_seen: int, warmup_rows: int) -> float:
    """A penalty weight rising linearly from 0 to ``coef`` over the first ``warmup_rows`` rows."""
    if warmup_rows <= 0:
        return coef
    return coef * min(1.0, rows_seen / warmup_rows)


def sum_sq_centred(x: "torch.Tensor") -> "torch.Tensor":
    """sum ||x_i - mean(x)||^2 over rows (the FVU denominator), floored at the dtype's tiny."""
    import torch

    centred = x - x.mean(0, keepdim=True)
    flat = centred.reshape(-1)
    return torch.dot(flat, flat).clamp_min(torch.finfo(x.dtype).tiny)


class SAETrainer(DictionaryTrainer):
    """What every trainer of this plugin shares: its dictionary class (which picks the export
    and import mapping in ``_interop``) and the export/import through it."""

    @classmethod
    def dictionary_class(cls) -> type:
        """The class ``build`` returns (imported lazily: listing plugins stays cheap)."""
        raise NotImplementedError

    def export(self, dictionary: Any, fmt: str, out_dir: Path) -> Path:
        from ._interop import export_dictionary

        return export_dictionary(self, dictionary, fmt, Path(out_dir))

    @classmethod
    def import_dictionary(cls, src_dir: Path, fmt: str):
        from ._interop import import_dictionary

        return import_dictionary(cls, Path(src_dir), fmt)


def unit_gradient(dictionary: Any) -> None:
    """Scale the gradients of all ``dictionary``'s parameters together to unit global norm.

    Why: Adam's second moment averages g^2 over ~1/(1 - beta2) = 1,000 steps, longer than most
    CPU-sized runs, so the large gradients of the first steps keep every later step small; a
    gradient of fixed norm gives each step the same weight. SAELens gets this by clipping its
    MSE gradient at 1.0 (always above 1 in training units). Measured with free decoder rows,
    2M-row synthetic store, d384/4096/k32, 244 steps: FVU 0.089 -> 0.075, MMCS 0.784 -> 0.847
    (docs/benchmarks.md, "Decoder parametrisation"). It runs after the DDP all-reduce (the
    loop calls ``before_step`` then), so every rank scales by the same norm.
    """
    import torch

    grads = [p.grad for p in dictionary.parameters() if p.grad is not None]
    if not grads:
        return
    with torch.no_grad():
        norm = torch.nn.utils.get_total_norm(grads)
        scale = norm.clamp_min(torch.finfo(torch.float32).tiny).reciprocal()  # no host sync; a zero gradient stays zero
        for g in grads:
            g.mul_(scale.to(g.dtype))


class UnitDecoder:
    """Decoder rows kept at unit norm: the gradient parallel to each row is removed before the
    optimiser step and the rows are renormalised after it (Bricken et al. 2023; Gao et al. 2024).
    A trainer that lets its options free the rows overrides :meth:`holds_unit_decoder`."""

    def holds_unit_decoder(self) -> bool:
        """Whether the decoder rows are held at unit norm (both hooks do nothing otherwise)."""
        return True

    def before_step(self, dictionary: Any, state: TrainState) -> None:
        """Remove the gradient component parallel to each (unit) decoder row."""
        import torch

        from ._kernels import _one_thread

        grad = dictionary.W_dec.grad
        if grad is None or not self.holds_unit_decoder():
            return
        with torch.no_grad(), _one_thread(grad.device):
            W = dictionary.W_dec
            parallel = torch.linalg.vecdot(grad, W).unsqueeze_(1)
            grad.addcmul_(parallel, W, value=-1)

    def after_step(self, dictionary: Any, state: TrainState) -> None:
        """Renormalise decoder rows to unit norm after the optimiser moved them."""
        if self.holds_unit_decoder():
            dictionary.normalise_decoder()


def init_b_dec(dictionary: Any, sample: Any, how: str) -> None:
    """Set ``b_dec`` from the initialisation sample: geometric median, mean, or zeros."""
    import torch

    with torch.no_grad():
        if how == "zeros" or sample is None or len(sample) == 0:
            dictionary.b_dec.zero_()
        elif how == "mean":
            dictionary.b_dec.copy_(sample.float().mean(0))
        else:
            dictionary.b_dec.copy_(geometric_median(sample.float()))


class TopKTrainer(UnitDecoder, SAETrainer):
    """TopK sparse autoencoder with AuxK (Gao et al. 2024, arXiv 2406.04093)."""

    name = "topk"
    description = "TopK sparse autoencoder with AuxK dead-latent loss (Gao et al. 2024); sparse fused kernels"
    Options = TopKOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens", "sparsify")

    # -- building -----------------------------------------------------------------------------
    def d_dict_for(self, d_in: int) -> int:
        return self.options.check_for(d_in)

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import TopKSAE

        return TopKSAE

    def build(self, d_in: int) -> "TopKSAE":
        return self.dictionary_class()(d_in, self.d_dict_for(d_in), self.options.k)

    def holds_unit_decoder(self) -> bool:
        return self.options.decoder == "unit"

    def before_step(self, dictionary: Any, state: TrainState) -> None:
        """The unit-decoder projection (if held), then, with ``unit_gradient``, the whole gradient
        scaled to unit norm."""
        super().before_step(dictionary, state)
        if self.options.unit_gradient:
            unit_gradient(dictionary)

    def initialize(self, dictionary: Any, sample: Any) -> None:
        """``b_dec`` from the sample; with ``decoder="free"`` the decoder rows (the encoder's
        directions) shrink to ``init_decoder_norm``.

        Why free rows starting small: Adam moves every weight by about the learning rate, so a
        row of norm 0.1 turns ~10x faster than a unit row early on and slows down as its norm
        grows to fit the data. On the 2M-row synthetic store (d 384, 4096 latents, k 32, 244
        steps) this took FVU 0.113 -> 0.089, MMCS 0.673 -> 0.784 and dead latents 288 -> 27
        against unit rows (docs/benchmarks.md, "Decoder parametrisation").
        """
        import torch

        init_b_dec(dictionary, sample, self.options.b_dec_init)
        if not self.holds_unit_decoder():
            with torch.no_grad():
                dictionary.normalise_decoder()
                dictionary.W_dec.mul_(self.options.init_decoder_norm)

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """The width rule; for a run of ``steps``: ``0.5 / (d_dict^(1/4) sqrt(steps))``, and with free
        decoder rows and the unit-norm gradient (topk's defaults) times a factor that peaks at sqrt(2)
        at 1,024 latents: ``min((d_dict / 512)^(1/2), (4096 / d_dict)^(1/4))`` held in [1, sqrt(2)];
        never below the width rule nor above 32x it.

        The width rule (Gao et al. / sparsify's scaling) (2e-4 at 2^14 latents, times (2^14 / d_dict)^0.5) is tuned for runs of many
        thousands of steps; short runs want far more, falling as 1/sqrt(steps). The quarter-power
        term was fitted with unit decoder rows and the raw gradient at 73-292 steps. With free rows
        and the unit gradient the best rates measured are sqrt(2)x the term at 1,024 latents (FVU
        0.133 -> 0.112 at 73 steps, 0.291 -> 0.274 at 1,000) and the term itself at 4,096 (0.5x and
        1.5x both worse). No other width was measured, so the factor returns to 1 on either side:
        at 512 latents a 28-step run (the quick demo) at sqrt(2)x left half its k slots empty.
        docs/benchmarks.md, "Default learning rate". The cap only binds on runs of a handful of steps.
        """
        rule = 2e-4 / math.sqrt(dictionary.d_dict / 2**14)
        if steps is None:
            return rule
        short = 0.5 / (dictionary.d_dict ** 0.25 * math.sqrt(max(1, steps)))
        if self.options.unit_gradient and not self.holds_unit_decoder():
            d = dictionary.d_dict
            short *= min(math.sqrt(2.0), max(1.0, min((d / 512) ** 0.5, (4096 / d) ** 0.25)))
        return min(32.0 * rule, max(rule, short))

    def k_aux(self, d_in: int) -> int:
        return self.options.k_aux if self.options.k_aux is not None else max(1, d_in // 2)

    def dead_after(self, dictionary: Any, loop_setting: int | None) -> int:
        """AuxK's horizon: ``-o dead_after`` when set, else the loop's ``-t dead_after``, else 1,000
        mean firing intervals (``d_dict / k`` rows each), at most Gao et al.'s 10M rows.

        Gao et al.'s 10M rows (AuxK, arXiv 2406.04093, section A.2) is never reached on a CPU-sized
        run. On short runs a horizon of a few dozen to a few hundred intervals harms: it flags
        latents that are rare but alive, and AuxK's gradient into their encoder rows leaves more of
        them dead on held-out rows (d384/4096/k32, lr 1e-2, 73 steps, 160 intervals: 53% dead
        against 46% without AuxK; 45% with AuxK's encoder gradient removed). At 1,000 intervals
        AuxK meets only latents silent in earnest and helps where they exist (d64/512/k8, lr 3e-2,
        320 steps: FVU 0.077 -> 0.063, MMCS 0.92 -> 0.97; the causal demo's 50k horizon cut
        held-out dead latents from 755 to 99). docs/benchmarks.md, "AuxK horizon".
        """
        own = self.options.dead_after or loop_setting
        return own or min(DEFAULT_DEAD_AFTER, 1000 * math.ceil(dictionary.d_dict / max(1, dictionary.k)))

    def _horizon(self, state: TrainState) -> int:
        return self.options.dead_after or state.dead_after or DEFAULT_DEAD_AFTER

    # -- the step -----------------------------------------------------------------------------
    def _dead_latents(self, dictionary: Any, state: TrainState | None) -> "torch.Tensor | None":
        if state is None or self.options.aux_coef == 0 or state.rows_since_fired is None:
            return None
        dead = state.rows_since_fired >= self._horizon(state)
        if not bool(dead.any()):
            return None
        return dead.nonzero().squeeze(1).to(dictionary.W_dec.device)

    def _encode(self, dictionary: Any, x: "torch.Tensor", dead: "torch.Tensor | None", k_aux: int):
        from ._kernels import dense_encode, topk_encode

        enc = topk_encode if self.options.decoder_impl == "sparse" else dense_encode
        return enc(x, dictionary.encoder.weight, dictionary.encoder.bias, dictionary.b_dec, dictionary.k, dead, k_aux)

    def _reconstruction(self, dictionary: Any, values, indices, bias, target, denominator):
        """(squared error / denominator, reconstruction) through the sparse or the dense decoder."""
        from ._kernels import dense_reconstruction_loss, sparse_reconstruction_loss

        fn = sparse_reconstruction_loss if self.options.decoder_impl == "sparse" else dense_reconstruction_loss
        return fn(values, indices, dictionary.W_dec, bias, target, denominator)

    def _reconstruction_loss(self, dictionary: Any, values, indices, x, total_variance, offset=None):
        """(loss term, metrics, x_hat) of the main reconstruction: FVU of the whole code.

        ``offset`` ([n, d], with gradients) is added to the reconstruction: a skip transcoder's
        ``W_skip x``. The fused kernel takes no gradient to its target, so with an offset the
        sparse decoder's output is compared with autograd instead.
        """
        if offset is None:
            fvu, x_hat = self._reconstruction(dictionary, values, indices, dictionary.b_dec, x, total_variance)
        else:
            from ._kernels import dense_decode, sparse_decode

            decode = sparse_decode if self.options.decoder_impl == "sparse" else dense_decode
            x_hat = decode(values, indices, dictionary.W_dec) + dictionary.b_dec + offset.to(dictionary.W_dec.dtype)
            diff = (x_hat - x).reshape(-1)
            fvu = torch_dot(diff) / total_variance
        return fvu, {"fvu_train": fvu.detach()}, x_hat

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        x = batch["acts"]
        dead = self._dead_latents(dictionary, state)
        k_aux = min(self.k_aux(dictionary.d_in), len(dead)) if dead is not None else 0
        values, indices, aux_values, aux_indices = self._encode(dictionary, x, dead, k_aux)
        return self._finish(dictionary, x, values, indices, aux_values, aux_indices, dead)

    def _finish(self, dictionary, x, values, indices, aux_values, aux_indices, dead, offset=None) -> StepOutput:
        """The losses once the code is chosen; ``x`` is what the decoder must reconstruct (a
        transcoder's target) and ``offset`` a term added to the reconstruction (its skip term)."""
        from ._kernels import _one_thread

        # Everything after the encoder is small memory-bound work: one thread (see _one_thread).
        with _one_thread(x.device):
            return self._losses(dictionary, x, values, indices, aux_values, aux_indices, dead, offset)

    def _losses(self, dictionary, x, values, indices, aux_values, aux_indices, dead, offset=None) -> StepOutput:
        import torch

        x = x.to(dictionary.W_dec.dtype)
        with torch.no_grad():
            total_variance = sum_sq_centred(x)
        if offset is None:
            loss, metrics, x_hat = self._reconstruction_loss(dictionary, values, indices, x, total_variance)
        else:
            loss, metrics, x_hat = self._reconstruction_loss(dictionary, values, indices, x, total_variance, offset)
        if dead is not None and aux_indices.shape[1] > 0:
            with torch.no_grad():
                e = x - x_hat.detach()
                aux_den = sum_sq_centred(e)
            scale = min(len(dead) / self.k_aux(dictionary.d_in), 1.0)
            auxk, _ = self._reconstruction(dictionary, aux_values, aux_indices, None, e, aux_den)
            auxk = scale * auxk
            loss = loss + self.options.aux_coef * auxk
            metrics["auxk_loss"] = auxk.detach()
        else:
            metrics["auxk_loss"] = 0.0
        with torch.no_grad():
            fired = values > 0
            hits = torch.zeros(dictionary.d_dict, dtype=torch.float32, device=values.device)
            hits.index_add_(0, indices.reshape(-1), fired.reshape(-1).to(torch.float32))
            active = hits > 0
            l0 = fired.sum() / fired.shape[0]
        return StepOutput(loss=loss, x_hat=x_hat.detach(), active=active, l0=l0, metrics=metrics)


class BatchTopKTrainer(TopKTrainer):
    """BatchTopK sparse autoencoder (Bussmann, Leask & Nanda 2024, arXiv 2412.06410)."""

    name = "batchtopk"
    description = "BatchTopK SAE: top n*k activations per batch in training, a learned threshold at inference (Bussmann et al. 2024)"
    Options = BatchTopKOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens",)

    def __post_init__(self) -> None:
        self._batch_min: "torch.Tensor | None" = None

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import BatchTopKSAE

        return BatchTopKSAE

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        import torch

        from ._kernels import batch_topk_encode, dense_batch_topk_encode

        x = batch["acts"]
        dead = self._dead_latents(dictionary, state)
        k_aux = min(self.k_aux(dictionary.d_in), len(dead)) if dead is not None else 0
        enc = batch_topk_encode if self.options.decoder_impl == "sparse" else dense_batch_topk_encode
        values, indices, aux_values, aux_indices = enc(
            x, dictionary.encoder.weight, dictionary.encoder.bias, dictionary.b_dec, dictionary.k, dead, k_aux
        )
        with torch.no_grad():
            kept = values[values > 0]
            self._batch_min = kept.min().float() if kept.numel() else None
        return self._finish(dictionary, x, values, indices, aux_values, aux_indices, dead)

    def after_step(self, dictionary: Any, state: TrainState) -> None:
        """Renormalise decoder rows and fold this batch's smallest kept activation into the threshold."""
        import torch

        super().after_step(dictionary, state)
        if self._batch_min is None and state.world_size == 1:
            return
        with torch.no_grad():
            # A rank without a positive kept activation contributes +inf to the min.
            local = self._batch_min if self._batch_min is not None else torch.tensor(float("inf"))
            local = local.reshape(1).to(dictionary.threshold.device, torch.float32).clone()
            state.all_reduce(local, "min")
            value = float(local)
            self._batch_min = None
            if not math.isfinite(value):
                return
            theta = dictionary.threshold
            if float(theta) <= 0:
                theta.fill_(value)  # first estimate: start at the batch's value, not at 0
            else:
                lr = self.options.threshold_lr
                theta.mul_(1 - lr).add_(lr * value)


class ReLUTrainer(SAETrainer):
    """ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic, April 2024 update)."""

    name = "relu"
    description = "ReLU SAE with decoder-norm-weighted L1 and L1 warm-up (Anthropic, April 2024 update)"
    Options = ReLUOptions
    formats: ClassVar[tuple[str, ...]] = ("saelens",)

    @classmethod
    def dictionary_class(cls) -> type:
        from ._models import ReLUSAE

        return ReLUSAE

    def build(self, d_in: int) -> "ReLUSAE":
        return self.dictionary_class()(d_in, self.options.check_for(d_in), self.options.init_decoder_norm)

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """Anthropic's April 2024 update: 5e-5 with Adam."""
        return 5e-5

    def l1_weight(self, rows_seen: int) -> float:
        return warmed_up(self.options.l1_coef, rows_seen, self.options.l1_warmup_rows)

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        import torch
        import torch.nn.functional as F

        from ._kernels import compute_dtype

        x = batch["acts"]
        # Keep fp32 where autocast's bf16 would only be emulated (see _kernels.compute_dtype).
        cdt = compute_dtype(x.device, torch.float32)
        with torch.autocast(x.device.type, dtype=cdt if cdt != torch.float32 else None, enabled=cdt != torch.float32):
            z = F.relu(F.linear(x, dictionary.encoder.weight, dictionary.encoder.bias))
            x_hat = (z @ dictionary.W_dec.to(z.dtype)).float() + dictionary.b_dec
        x = x.float()
        mse = F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        norms = dictionary.W_dec.norm(dim=1)
        l1 = (z.float() @ norms).mean()
        coef = self.l1_weight(state.rows_seen if state is not None else 0)
        loss = mse + coef * l1
        with torch.no_grad():
            fired = z > 0
            active = fired.any(0)
            l0 = fired.sum(1).float().mean()
        return StepOutput(loss=loss, x_hat=x_hat, active=active, l0=l0,
                          metrics={"mse": mse.detach(), "l1": l1.detach(), "l1_coef": coef})


TRAINERS = (TopKTrainer, BatchTopKTrainer, ReLUTrainer)
