"""A tiny GPT-2-style character model whose MLPs are dense GELU, Switch MoE or MoE-X.

Pre-LayerNorm blocks, learned positions, causal attention through
``scaled_dot_product_attention``, tied embeddings. ``mlp`` picks the MLP of every block:
``gelu`` (dense, width 4 d_model), ``switch``, ``moex`` and the paper's two ablations
``router_only`` (GELU experts, sparsity-aware router) and ``relu_only`` (ReLU experts, softmax
router). MoE layers get equal active parameters: ``top_k`` experts of width ``4 d_model / top_k``.

Saved as ``config.json`` + ``model.safetensors``; ``load_lm`` rebuilds it. Hook points are module
names: ``blocks.1.mlp.hidden`` (the MLP's hidden units, M*D wide for MoE layers),
``blocks.1.mlp.out`` (the MLP's output), ``blocks.1`` (the residual stream after block 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featureforge import BadInputError
from featureforge_moex.layers import DenseMLP, MoEMLP, equal_active_width, upcycle

from .chess_games import VOCAB

MLP_KINDS = {
    "gelu": None,
    "switch": ("gelu", "softmax"),
    "moex": ("relu", "sparsity"),
    "router_only": ("gelu", "sparsity"),
    "relu_only": ("relu", "softmax"),
}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass
class LMConfig:
    """Shape of a chess language model."""

    mlp: str = "gelu"
    n_layer: int = 3
    d_model: int = 128
    n_head: int = 4
    context: int = 256
    n_experts: int = 8
    top_k: int = 2
    vocab_size: int = len(VOCAB)

    @property
    def d_hidden(self) -> int:
        return 4 * self.d_model


def build_mlp(cfg: LMConfig) -> nn.Module:
    """The MLP of one block for ``cfg.mlp``."""
    if cfg.mlp not in MLP_KINDS:
        raise BadInputError(f"mlp={cfg.mlp!r} is not known; use one of {', '.join(MLP_KINDS)}")
    kind = MLP_KINDS[cfg.mlp]
    if kind is None:
        return DenseMLP(cfg.d_model, cfg.d_hidden)
    activation, router = kind
    width = equal_active_width(cfg.d_hidden, cfg.top_k)
    return MoEMLP(cfg.d_model, cfg.n_experts, width, cfg.top_k, activation=activation, router=router)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = build_mlp(cfg)
        self.n_head = cfg.n_head

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_out(attn)
        return x + self.mlp(self.ln2(x))


class ChessLM(nn.Module):
    """Character-level causal LM over PGN text."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise BadInputError(f"d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}; pick n_head dividing it")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``[b, t, vocab]``."""
        if ids.shape[1] > self.cfg.context:
            raise BadInputError(f"sequence of {ids.shape[1]} tokens exceeds the model's context of {self.cfg.context}")
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T

    def aux_loss(self) -> Tensor:
        """Mean load-balancing loss of the MoE layers in the last forward (0 for dense)."""
        losses = [b.mlp.aux_loss for b in self.blocks if b.mlp.aux_loss is not None]
        return torch.stack(losses).mean() if losses else torch.zeros((), device=self.tok.weight.device)

    def active_mlp_params(self) -> int:
        """Parameters one token uses in all MLPs (the paper's equal-active-parameters budget)."""
        total = 0
        for b in self.blocks:
            m = b.mlp
            if isinstance(m, DenseMLP):
                total += sum(p.numel() for p in m.parameters())
            else:
                total += m.top_k * m.expert_width * (2 * m.d_model + 1) + m.d_model
        return total


def save_lm(model: ChessLM, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (no pickle)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "featureforge-testbeds chess-lm"})
    (folder / CONFIG_FILE).write_text(json.dumps({"kind": "featureforge-testbeds chess-lm", **dataclasses.asdict(model.cfg), **(extra or {})}, indent=2) + "\n")
    return folder


def load_lm(folder: str | Path) -> ChessLM:
    """Rebuild a model saved by ``save_lm``; one-line errors for a missing or foreign folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise BadInputError(f"{folder} is not a chess model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); train one with featureforge_testbeds.train_lm and save it with featureforge_testbeds.save_lm")
    raw = json.loads((folder / CONFIG_FILE).read_text())
    fields = {f.name for f in dataclasses.fields(LMConfig)}
    cfg = LMConfig(**{k: v for k, v in raw.items() if k in fields})
    model = ChessLM(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    return model


@dataclasses.dataclass
class TrainResult:
    steps: int
    train_loss: float
    val_loss: float
    seconds: float


def batches_of(ids: Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches of rows of ``ids [games, context]``."""
    while True:
        for chunk in torch.randperm(len(ids), generator=generator).split(batch_size):
            if len(chunk) == batch_size:
                yield ids[chunk]


def pad_games(games, context: int) -> Tensor:
    """``[n, context]`` token ids; short games are padded with spaces (masked out of the loss by ``lm_loss``)."""
    out = torch.full((len(games), context), -1, dtype=torch.long)
    for i, g in enumerate(games):
        ids = torch.from_numpy(g.ids[:context])
        out[i, : len(ids)] = ids
    return out


def lm_loss(model: ChessLM, ids: Tensor) -> Tensor:
    """Mean next-character cross-entropy over real (non-padding) targets."""
    inputs = ids[:, :-1].clamp_min(0)
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=-1)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked (CUDA, or CPU for a dry run), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def validation_loss(model: ChessLM, ids: Tensor, batch_size: int = 64, bf16: bool = False) -> float:
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for chunk in ids.split(batch_size):
        chunk = chunk.to(device)
        n = int((chunk[:, 1:] >= 0).sum())
        with autocast(device, bf16):
            total += float(lm_loss(model, chunk)) * n
        count += n
    return total / max(count, 1)


def train_lm(
    model: ChessLM, train_ids: Tensor, val_ids: Tensor, *, steps: int, batch_size: int = 32, lr: float = 3e-3,
    lb_coef: float = 0.01, seed: int = 0, log=None, bf16: bool = False,
) -> TrainResult:
    """AdamW with linear warm-up and cosine decay; loss = CE + ``lb_coef`` x load balance.

    Runs on the model's device (move it first, e.g. ``model.cuda()``); ``bf16`` wraps forward and
    loss in bf16 autocast, weights and optimiser state stay fp32.
    """
    import time

    device = model_device(model)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    start = time.perf_counter()
    ce = torch.zeros(())
    model.train()
    for step, batch in zip(range(steps), batches_of(train_ids, batch_size, g)):
        with autocast(device, bf16):
            ce = lm_loss(model, batch.to(device))
            loss = ce + lb_coef * model.aux_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, float(ce.detach()))
    val = validation_loss(model, val_ids, bf16=bf16)
    return TrainResult(steps, float(ce.detach()), val, time.perf_counter() - start)


@torch.no_grad()
def upcycle_lm(dense: ChessLM, mlp: str = "moex", noise: float = 0.0, seed: int = 0) -> ChessLM:
    """A copy of a trained dense model whose MLPs are MoE layers upcycled from it (paper Table 4).

    Embeddings, attention and layer norms are copied; each block's MoE experts start from slices of
    its dense MLP (``featureforge_moex.upcycle``); the router of a ``switch``/``relu_only`` model starts at its
    fresh initialisation (seeded by ``seed``). Fine-tune the result with ``train_lm``.
    """
    if dense.cfg.mlp != "gelu":
        raise BadInputError(f"can only upcycle a dense model (mlp='gelu'), not mlp={dense.cfg.mlp!r}")
    torch.manual_seed(seed)
    model = ChessLM(dataclasses.replace(dense.cfg, mlp=mlp))
    own = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing = [k for k in model.state_dict() if ".mlp." not in k and k not in own]
    assert not missing, missing
    model.load_state_dict(own, strict=False)
    g = torch.Generator().manual_seed(seed)
    for src, dst in zip(dense.blocks, model.blocks):
        upcycle(src.mlp, dst.mlp, noise=noise, generator=g)
    return model
