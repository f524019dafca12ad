"""Small GPT-2-style causal language models made here, with a tokenizer trained here: no downloads.

``make_tokenizer`` trains a byte-level BPE tokenizer on some text (it puts ``<|endoftext|>`` before
every sequence, as BOS); ``make_gpt2`` saves a randomly initialised ``GPT2LMHeadModel`` with it as
a Hugging Face folder that ``-o model=FOLDER`` loads (``save_model``). Used by the plugins' tests,
``benchmarks/gpu_suite.py`` and featureforge-testbeds' ``tiny-lm`` trainer, which trains one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

BOS = "<|endoftext|>"


def make_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level BPE trained on ``texts``, BOS before each sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=None)


def build_gpt2(
    tokenizer: Any,
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 64,
    dropout: float = 0.0,
    seed: int = 0,
) -> Any:
    """A randomly initialised ``GPT2LMHeadModel`` sized for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def make_gpt2(
    folder: str | Path,
    texts: Iterable[str],
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 64,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised GPT-2 and its tokenizer (trained on ``texts``) into ``folder``."""
    tokenizer = make_tokenizer(texts, vocab_size)
    model = build_gpt2(tokenizer, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, seed=seed)
    return save_model(folder, model, tokenizer)


def save_model(folder: str | Path, model: Any, tokenizer: Any) -> Path:
    """Save ``model`` and ``tokenizer`` as a Hugging Face folder (``-o model=FOLDER``), without transformers' bars and warnings."""
    from ._model import _quiet_transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder
