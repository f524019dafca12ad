"""The ``transcoder`` and ``crosscoder`` trainers: dictionaries that read some sites and write others.

Both are the topk family's trainers (``trainers.TopKTrainer``/``BatchTopKTrainer``: the fused
kernels, AuxK, free or unit decoder rows, the unit gradient, the learning-rate rule) with other
batch roles (contract of issue #23; the loop fills the roles ``sites_for`` names):

* ``transcoder`` reads ``batch["acts"]`` (the source site) and predicts ``batch["target"]``; its
  loss is the FVU of the target, ``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` (+ AuxK on the
  target's residual), or with ``activation=jumprelu`` the jumprelu trainer's eqs. 8-10 with the
  target in place of the input. ``skip=true`` adds ``W_skip x`` (Paulo, Belrose et al. 2025).
* ``crosscoder`` reads ``batch["sites"]`` ``[n, S, d]`` and reconstructs all of it: the topk
  loss on the sites concatenated, which is the FVU over every site together (each site
  normalised by its own statistics, so every site weighs the same). Lindsey et al. (2024) train
  ReLU crosscoders with an L1 penalty weighted by the sum of the per-layer decoder norms; with
  TopK (as dictionary_learning's BatchTopK crosscoder) no penalty is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from featureforge import BadInputError, OptionError, StepOutput, TrainState

from .options import CrosscoderOptions, TranscoderOptions
from .trainers import BatchTopKTrainer, UnitDecoder, init_b_dec, sum_sq_centred, warmed_up


def rows_of(sample: Any, role: str) -> Any:
    """The initialisation sample's rows of ``role``: a mapping role -> rows, or one tensor, which
    is the ``acts`` rows ([n, d]) or the stacked ``sites`` ([n, S, d]), as the loop passes it."""
    if isinstance(sample, Mapping):
        return sample.get(role)
    if sample is None:
        return None
    return sample if (role == "sites") == (sample.dim() == 3) and role in ("acts", "sites") else None


def loop_roles(trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(role widths, role scales) the loop sets on the trainer before ``build`` (issue #23:
    ``DictionaryTrainer.role_widths`` / ``role_scales``; also when a run is loaded); empty outside it."""
    return dict(getattr(trainer, "role_widths", None) or {}), dict(getattr(trainer, "role_scales", None) or {})


class _CoderTrainer(BatchTopKTrainer):
    """What both share: the activation option picks topk, batchtopk (with its threshold) or jumprelu."""

    def _batch_topk(self) -> bool:
        return self.options.activation == "batchtopk"

    def _encode_rows(self, dictionary: Any, x: Any, state: TrainState):
        """(values, indices, aux_values, aux_indices, dead) of flat source rows, with BatchTopK's
        smallest kept value recorded for its threshold."""
        import torch

        from ._kernels import batch_topk_encode, dense_batch_topk_encode, dense_encode, topk_encode

        dead = self._dead_latents(dictionary, state)
        k_aux = min(self.k_aux(dictionary.d_in), len(dead)) if dead is not None else 0
        sparse = self.options.decoder_impl == "sparse"
        if self._batch_topk():
            enc = batch_topk_encode if sparse else dense_batch_topk_encode
        else:
            enc = topk_encode if sparse else dense_encode
        x = x.to(dictionary.W_dec.dtype)
        values, indices, aux_values, aux_indices = enc(x, dictionary.encoder.weight, dictionary.encoder.bias,
                                                       dictionary.input_centre(), dictionary.k, dead, k_aux)
        if self._batch_topk():
            with torch.no_grad():
                kept = values[values > 0]
                self._batch_min = kept.min().float() if kept.numel() else None
        return values, indices, aux_values, aux_indices, dead

    def after_step(self, dictionary: Any, state: TrainState) -> None:
        """Unit decoder rows (if held); BatchTopK's threshold update only for that activation."""
        if self._batch_topk():
            super().after_step(dictionary, state)
        else:
            UnitDecoder.after_step(self, dictionary, state)

    def initialize(self, dictionary: Any, sample: Any) -> None:
        """Free decoder rows shrink to ``init_decoder_norm`` (as topk's); ``b_dec`` and the encoder
        bias come from the sample's roles in :meth:`init_biases`."""
        import torch

        self.init_biases(dictionary, sample)
        if not self.holds_unit_decoder():
            with torch.no_grad():
                dictionary.normalise_decoder()
                dictionary.W_dec.mul_(self.options.init_decoder_norm)

    def init_biases(self, dictionary: Any, sample: Any) -> None:
        raise NotImplementedError


class TranscoderTrainer(_CoderTrainer):
    """(Skip) transcoder: a sparse map from a source site to a target site, FVU of the target."""

    name = "transcoder"
    description = "Transcoder (sparse map from one site to another, e.g. an MLP's input to its output); TopK, BatchTopK or JumpReLU; skip=true adds W_skip (Paulo et al. 2025)"
    Options = TranscoderOptions
    columns: ClassVar[tuple[str, ...]] = ("acts", "target")
    formats: ClassVar[tuple[str, ...]] = ("saelens", "sparsify")

    def sites_for(self, store_sites: Sequence[str], site: str | None = None) -> dict[str, str]:
        """``{"acts": source, "target": target}``; defaults: the source is ``site`` or the store's
        first site, the target the site after it. The resolved names are kept in the options, so
        the run's ``config.json`` says which sites the dictionary maps (splicing reads them)."""
        sites = list(store_sites)
        o = self.options
        source = o.source or site or (sites[0] if sites else "")
        for name, what in ((source, "source"),) + (((o.target, "target"),) if o.target else ()):
            if name not in sites:
                raise OptionError(f"transcoder {what}={name!r} is not a site of the store (sites: {', '.join(sites) or 'none'}); pass -o {what}=SITE")
        target = o.target
        if not target:
            after = sites[sites.index(source) + 1:]
            if not after:
                raise OptionError(f"the store has no site after {source!r} to predict (sites: {', '.join(sites)}); cache an MLP's input and output (-o site=mlp-io) or pass -o target=SITE")
            target = after[0]
        if target == source:
            raise OptionError(f"source and target are the same site ({source!r}); a transcoder maps one site to another")
        o.source, o.target = source, target
        return {"acts": source, "target": target}

    @classmethod
    def dictionary_class(cls) -> type:
        from ._coders import Transcoder

        return Transcoder

    def build(self, d_in: int) -> Any:
        """The transcoder for source rows of width ``d_in``; the target's width is ``d_target``, else
        the loop's ``role_widths["target"]``, else ``d_in``; the loop's role scales are applied."""
        o = self.options
        widths, scales = loop_roles(self)
        d_out = o.d_target or int(widths.get("target") or d_in)
        dictionary = self.dictionary_class()(d_in, self.d_dict_for(d_in), d_out, o.k, o.activation, o.skip, o.init_threshold)
        if "acts" in scales:
            dictionary.set_role_scales(scales)
        return dictionary

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        """topk's rule; with ``activation=jumprelu`` the jumprelu trainer's (thresholds move in log space)."""
        if self.options.activation == "jumprelu":
            from .jumprelu import JumpReLUTrainer

            return JumpReLUTrainer.learning_rate(self, dictionary, steps)  # type: ignore[arg-type]
        return super().learning_rate(dictionary, steps)

    def init_biases(self, dictionary: Any, sample: Any) -> None:
        """``b_dec`` from the target rows (``b_dec_init``: geometric median, mean, zeros) and the
        encoder bias ``-W_enc mean(x)`` so pre-activations start centred on the source rows (the
        encoder sees ``x`` itself; an autoencoder gets this from ``x - b_dec``)."""
        import torch

        init_b_dec(dictionary, rows_of(sample, "target"), self.options.b_dec_init)
        source = rows_of(sample, "acts")
        with torch.no_grad():
            if source is not None and len(source):
                dictionary.encoder.bias.copy_(-(dictionary.encoder.weight @ source.float().mean(0)))

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        x, y = batch["acts"], batch.get("target")
        if y is None:
            raise BadInputError("the transcoder trainer needs a 'target' batch role (rows of another site); "
                                "train it on a store with several sites (-o site=mlp-io), with -o target=SITE")
        if tuple(y.shape) != (x.shape[0], dictionary.d_out):
            raise BadInputError(f"target rows have shape {tuple(y.shape)} but this transcoder predicts [{x.shape[0]}, {dictionary.d_out}]; "
                                "pass -o d_target= the target site's width")
        x = x.to(dictionary.W_dec.dtype)
        offset = dictionary.skip_term(x)
        if self.options.activation == "jumprelu":
            from .jumprelu import jumprelu_step

            coef = warmed_up(self.options.l0_coef, state.rows_seen if state is not None else 0, self.options.l0_warmup_rows)
            return jumprelu_step(dictionary.pre_activations(x), dictionary.jump_threshold(), dictionary.W_dec, dictionary.b_dec,
                                 y, self.options.bandwidth, coef, offset)
        values, indices, aux_values, aux_indices, dead = self._encode_rows(dictionary, x, state)
        return self._finish(dictionary, y, values, indices, aux_values, aux_indices, dead, offset)

    def export(self, dictionary: Any, fmt: str, out_dir: Path) -> Path:
        from ._coder_interop import export_transcoder

        return export_transcoder(self, dictionary, fmt, Path(out_dir))

    @classmethod
    def import_dictionary(cls, src_dir: Path, fmt: str):
        from ._coder_interop import import_transcoder

        return import_transcoder(cls, Path(src_dir), fmt)


class CrosscoderTrainer(_CoderTrainer):
    """Acausal crosscoder: one TopK/BatchTopK dictionary over several sites, reconstructing all."""

    name = "crosscoder"
    description = "Crosscoder (Lindsey et al. 2024): one dictionary whose encoder reads several sites and whose decoder writes every one; TopK or BatchTopK"
    Options = CrosscoderOptions
    columns: ClassVar[tuple[str, ...]] = ("sites",)
    formats: ClassVar[tuple[str, ...]] = ()

    def sites_for(self, store_sites: Sequence[str], site: str | None = None) -> dict[str, tuple[str, ...]]:
        """``{"sites": (...)}``: every site of the store (``sites=all``) or the listed ones, in
        the order given; kept in the options so ``config.json`` records them."""
        sites = tuple(store_sites)
        wanted = sites if self.options.sites == ("all",) else self.options.sites
        unknown = [s for s in wanted if s not in sites]
        if unknown:
            raise OptionError(f"crosscoder sites {', '.join(unknown)} are not sites of the store (sites: {', '.join(sites) or 'none'}); pass -o sites=a,b,c")
        if len(wanted) < 2:
            raise OptionError(f"the store has {len(wanted)} site ({', '.join(wanted)}); a crosscoder reads at least two: cache several (-o hook=a,b)")
        self.options.sites = tuple(wanted)
        return {"sites": tuple(wanted)}

    @classmethod
    def dictionary_class(cls) -> type:
        from ._coders import Crosscoder

        return Crosscoder

    def n_sites(self) -> int:
        """How many sites: the listed ones, else the loop's ``role_widths["sites"]`` (S, d)."""
        widths, _ = loop_roles(self)
        if self.options.sites == ("all",) and "sites" in widths:
            return int(widths["sites"][0])
        return len(self.options.resolved())

    def d_dict_for(self, d_in: int) -> int:
        """``d_dict``, or the expansion factor times the width of one site (not of all together)."""
        return self.options.check_for(d_in)

    def build(self, d_in: int) -> Any:
        dictionary = self.dictionary_class()(d_in, self.d_dict_for(d_in), self.n_sites(), self.options.k, self.options.activation)
        _, scales = loop_roles(self)
        if "sites" in scales:
            dictionary.set_role_scales(scales)
        return dictionary

    def init_biases(self, dictionary: Any, sample: Any) -> None:
        """``b_dec`` from the stacked sites' rows (flat), when the sample has them."""
        rows = rows_of(sample, "sites")
        init_b_dec(dictionary, dictionary.flat(rows) if rows is not None else None, self.options.b_dec_init)

    def _site_rows(self, dictionary: Any, batch: Any) -> Any:
        x = batch.get("sites")
        if x is None:
            raise BadInputError("the crosscoder trainer needs a 'sites' batch role ([n, S, d] rows of several sites); "
                                "train it on a store with several sites (-o hook=a,b,c)")
        return dictionary.flat(x)

    def loss(self, dictionary: Any, batch: Any, state: TrainState) -> StepOutput:
        x = self._site_rows(dictionary, batch).to(dictionary.W_dec.dtype)
        values, indices, aux_values, aux_indices, dead = self._encode_rows(dictionary, x, state)
        out = self._finish(dictionary, x, values, indices, aux_values, aux_indices, dead)
        out.x_hat = out.x_hat.view(x.shape[0], dictionary.n_sites, dictionary.d_in)
        stacked = x.view_as(out.x_hat)
        for s in range(dictionary.n_sites):  # per-site FVU of this batch, logged as fvu_site_<s>
            err = (stacked[:, s] - out.x_hat[:, s]).pow(2).sum()
            out.metrics[f"fvu_site_{s}"] = err / sum_sq_centred(stacked[:, s])
        return out


TRAINERS = (TranscoderTrainer, CrosscoderTrainer)
