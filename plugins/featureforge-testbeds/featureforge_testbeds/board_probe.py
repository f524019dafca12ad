"""Board-state metrics of Karvonen et al. (arXiv 2408.00113) for units of a chess model.

Properties: square s holds class c (64 x 13, see ``chess_games``), one binary label per
('.'-position, property). Properties that never (or always) hold in the evaluation positions
are dropped: their F1 is undefined or trivial.

A unit (MLP hidden unit or SAE latent) "fires" at threshold t when its activation exceeds
``t * max`` (its maximum over the evaluation positions), for t in ``THRESHOLDS``; units that never
exceed 0 never fire.

* coverage: for each property, the best F1 of any single unit at any threshold; averaged over
  properties.
* reconstruction: at each threshold, a unit predicts a property when, among positions where it
  fires (at least ``MIN_FIRES`` of them), the property holds with precision >= ``MIN_PRECISION``;
  the board is rebuilt as every property predicted by some firing unit, and scored by F1 over all
  (position, property) pairs. The best threshold is reported.
"""

from __future__ import annotations

import numpy as np
import torch

from .chess_games import N_CLASSES

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_PRECISION = 0.95
MIN_FIRES = 10


def board_labels(boards: np.ndarray, n_classes: int = N_CLASSES) -> torch.Tensor:
    """``[n, squares*classes]`` one-hot labels of ``boards [n, squares]`` (property = square*classes + class).

    ``n_classes`` is 13 for chess, 3 for Othello (empty / mover's / opponent's).
    """
    b = torch.as_tensor(boards, dtype=torch.long)
    return torch.nn.functional.one_hot(b, n_classes).reshape(len(b), -1).float()


def _fire(acts: torch.Tensor, t: float, peak: torch.Tensor) -> torch.Tensor:
    return ((acts > t * peak) & (peak > 0)).float()


@torch.no_grad()
def board_metrics(acts: torch.Tensor, boards: np.ndarray, n_classes: int = N_CLASSES) -> dict[str, float]:
    """Coverage and reconstruction of units ``acts [n, units]`` against ``boards [n, squares]``."""
    acts = acts.float()
    labels = board_labels(boards, n_classes)
    positives = labels.sum(0)
    keep = (positives > 0) & (positives < len(labels))
    labels = labels[:, keep]
    positives = positives[keep]
    peak = acts.max(0).values.clamp_min(0)
    best_f1 = torch.zeros(labels.shape[1])
    best_rec = {"f1": 0.0, "threshold": 0.0, "precision": 0.0, "recall": 0.0, "units": 0}
    for t in THRESHOLDS:
        fire = _fire(acts, t, peak)
        fires = fire.sum(0)
        tp = fire.T @ labels
        f1 = 2 * tp / (fires[:, None] + positives[None, :]).clamp_min(1)
        best_f1 = torch.maximum(best_f1, f1.max(0).values)
        precise = (tp / fires[:, None].clamp_min(1) >= MIN_PRECISION) & (fires[:, None] >= MIN_FIRES)
        predicted = (fire @ precise.float()) > 0
        hit = float((predicted & (labels > 0)).sum())
        n_pred, n_true = float(predicted.sum()), float(positives.sum())
        rec_f1 = 2 * hit / max(n_pred + n_true, 1)
        if rec_f1 > best_rec["f1"]:
            best_rec = {"f1": rec_f1, "threshold": t, "precision": hit / max(n_pred, 1), "recall": hit / max(n_true, 1),
                        "units": int(precise.any(1).sum())}
    return {
        "coverage": float(best_f1.mean()),
        "reconstruction": best_rec["f1"],
        "reconstruction_threshold": best_rec["threshold"],
        "reconstruction_precision": best_rec["precision"],
        "reconstruction_recall": best_rec["recall"],
        "precise_units": best_rec["units"],
        "properties": int(keep.sum()),
        "positions": int(len(acts)),
        "units": int(acts.shape[1]),
        "alive_units": int((peak > 0).sum()),
    }


@torch.no_grad()
def collect_at_dots(model, games, hook: str, batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """Activations at module ``hook`` at every '.' position of ``games``, with the boards there."""
    from .chess_lm import pad_games
    from .capture import capture

    ids = pad_games(games, model.cfg.context)
    rows, boards = [], []
    for start in range(0, len(games), batch_size):
        chunk = ids[start : start + batch_size]
        acts = capture(model, chunk.clamp_min(0), hook)
        for i, game in enumerate(games[start : start + batch_size]):
            dots = torch.as_tensor(game.dots)
            rows.append(acts[i, dots])
            boards.append(game.boards)
    return torch.cat(rows), np.concatenate(boards)


@torch.no_grad()
def linear_probe_f1(acts: torch.Tensor, boards: np.ndarray, train_fraction: float = 0.7, ridge: float = 1e-2,
                    n_classes: int = N_CLASSES, classes: tuple[int, ...] | None = None) -> float:
    """Board F1 of a ridge-regression probe from ``acts`` (e.g. the residual stream) to all properties.

    Not one of Karvonen et al.'s unit metrics: it tells whether the board is decodable from the
    layer at all, so unit metrics near an untrained model's can be read (no features vs features
    spread over units). Rows are split in order (the first ``train_fraction`` of the positions,
    i.e. of the games, train); prediction = score > 0.5; micro F1 over held-out (position,
    property) pairs, properties as in ``board_metrics``; ``classes`` keeps only those classes'
    properties (e.g. Othello's "mover's"/"opponent's", leaving out "empty", which a bag of the
    tokens played already gives).
    """
    x = acts.double()
    labels = board_labels(boards, n_classes).double()
    positives = labels.sum(0)
    keep = (positives > 0) & (positives < len(labels))
    if classes is not None:
        keep &= torch.isin(torch.arange(labels.shape[1]) % n_classes, torch.tensor(classes))
    labels = labels[:, keep]
    cut = int(len(x) * train_fraction)
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-8)
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = x[:cut].T @ x[:cut] + ridge * cut * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x[:cut].T @ labels[:cut])
    predicted = (x[cut:] @ weights) > 0.5
    truth = labels[cut:] > 0
    hit = float((predicted & truth).sum())
    return 2 * hit / max(float(predicted.sum() + truth.sum()), 1.0)
