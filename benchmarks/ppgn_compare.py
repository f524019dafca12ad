"""PPGN samples vs pixel-space facet synthesis vs real top images, for the same units and latents.

The claim checked (Nguyen et al., "Plug & Play Generative Networks", arXiv 1612.00005): sampling in
a generator's code space under a learned prior gives samples that are more realistic and reach more
of a unit's facets than activation maximisation in pixel space (Nguyen, Yosinski & Clune 2016).

Setting: scikit-learn's 8x8 digits upsampled to 16x16, merged in pairs into 5 classes; the
condition network is ``digits.SmallCNN``; its fc layer (64 wide, the paper's fc6) is the PPGN code.
Units: the 5 class logits and ``--latents`` latents of a TopK dictionary trained through
featureforge (``cache`` of fc activations from an array, ``train topk``, ``load``). Per unit and
seed, four methods: the top real images, pixel-space synthesis (one image per facet),
PPGN (trained generator + DAE prior), and two controls: PPGN with the generator at its random
initialisation, and PPGN without the prior (ε1 = 0, DGN-AM-like).

Measures, all in an *independent* network (an MLP trained on the 10 original digits, other seed):
activation reached (fraction of the best real image's, in the condition network), diversity (mean
pairwise distance of its penultimate features), real facets reached (facets of the unit's top 64
images; ``ppgn_facets.facet_membership``), digits of the merged class covered (its argmax, when
confident), realism (its max softmax confidence) and a Fréchet distance of its features against
all real images, at equal sample counts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ppgn_compare.py --out benchmarks/results/ppgn_compare/ppgn_compare.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import provenance  # noqa: E402


def independent_classifier(x: torch.Tensor, digit: torch.Tensor, seed: int = 11) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    n_train = len(x) * 4 // 5
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:n_train], perm[n_train:]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(40):
        for b in train[torch.randperm(n_train)].split(64):
            loss = nn.functional.cross_entropy(net(x[b]), digit[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((net(x[test]).argmax(1) == digit[test]).float().mean())
    return net.eval(), acc


@torch.no_grad()
def judge(net: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features [n, 32], softmax [n, 10]) of the independent classifier."""
    feats = net[:5](images)
    return feats.numpy(), torch.softmax(net[5](feats), 1).numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    return float(mu @ mu + np.trace(ca + cb - 2 * np.real(root)))


def dictionary_over_fc(model: nn.Module, x: torch.Tensor, folder: Path, d_dict: int, k: int):
    import featureforge
    from featureforge_multifaceted.ppgn import codes

    acts = codes(model, x, "fc").numpy()
    np.save(folder / "fc.npy", np.repeat(acts, 8, axis=0))  # 8 passes of the 1797 codes: enough rows to train on
    store = featureforge.cache("array", {"path": str(folder / "fc.npy")}, store=str(folder / "fc.zarr"), rows_per_chunk=2048, progress=False)
    featureforge.train("topk", {"k": k, "d_dict": d_dict}, store=store.url, out=str(folder / "run"), epochs=3, batch_size=256, progress=False)
    return featureforge.load(folder / "run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="Sampler / synthesis seeds per unit.")
    ap.add_argument("--generators", type=int, default=2, help="PPGNs trained (generator/DAE seeds); seed s uses PPGN s mod this.")
    ap.add_argument("--ppgn-epochs", type=int, default=40)
    ap.add_argument("--latents", type=int, default=3, help="Dictionary latents added to the 5 class units.")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--init", default="random", choices=["random", "mean", "data", "top"],
                    help="Where PPGN chains start (top: codes of the unit's top real images, one per chain).")
    provenance.add_out_argument(ap, "ppgn_compare")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from featureforge_multifaceted.facets import find_facets
    from featureforge_multifaceted.ppgn import PPGNSettings, codes, train_ppgn, untrained_like
    from featureforge_multifaceted.ppgn_facets import embed, facet_membership
    from featureforge_multifaceted.ppgn_sampler import SamplerSettings, condition_function, sample
    from featureforge_multifaceted.synthesis import SynthesisSettings
    from featureforge_multifaceted.vision import Unit, facet_synthesis, top_images, unit_function
    from featureforge_testbeds.digits import MERGED, merged_digits, train_cnn

    t0 = time.time()
    x, merged, digit = merged_digits()
    model, cnn_acc = train_cnn(x, merged, epochs=5)
    judge_net, judge_acc = independent_classifier(x, digit)
    real_feats, _ = judge(judge_net, x)
    ppgns = []
    for g in range(args.generators):
        t = time.time()
        ppgns.append(train_ppgn(model, x, PPGNSettings(epochs=args.ppgn_epochs, dae_epochs=60, seed=g)))
        print(f"PPGN {g} trained in {time.time() - t:.0f}s: {ppgns[-1].info['generator_losses']}", file=sys.stderr, flush=True)
    units = [(f"class {c} (digits {a}/{b})", Unit("head", c), (a, b)) for c, (a, b) in enumerate(MERGED)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.latents:
            dictionary = dictionary_over_fc(model, x, Path(tmp), d_dict=64, k=8)
            with torch.no_grad():
                fires = (dictionary.encode(torch.from_numpy(embed(model, x, "fc"))) > 0).float().mean(0)
            # Latents spread over the firing range (skip dead ones and the densest).
            alive = [int(i) for i in torch.argsort(fires) if 0.02 < float(fires[i]) < 0.5]
            picks = [alive[round(j * (len(alive) - 1) / max(args.latents - 1, 1))] for j in range(args.latents)] if alive else []
            units += [(f"latent {i} (fires on {float(fires[i]):.1%})", Unit("fc", i, dictionary), None) for i in picks]

        methods = ["real", "pixel", "ppgn", "ppgn_untrained_generator", "ppgn_no_prior"]
        rows = []
        pooled: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        for name, unit, pair in units:
            idx, vals, emb = top_images(model, x, unit, "fc", 64)
            found = find_facets(emb)
            act = unit_function(model, unit)
            best = float(vals[0])
            for seed in range(args.seeds):
                ppgn = ppgns[seed % len(ppgns)]
                settings = SamplerSettings(steps=args.steps, every=20, seed=seed, init=args.init)
                start = None
                if args.init in ("top", "data"):
                    pick = idx[np.arange(args.chains) % len(idx)] if args.init == "top" else \
                        torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: args.chains]
                    start = codes(model, x[pick], "fc")
                burn = args.steps // 2
                made: dict[str, torch.Tensor] = {"real": x[idx]}
                per_chain: dict[str, int] = {}
                made["pixel"] = facet_synthesis(model, x, unit, "fc", top_n=64, synthesis=SynthesisSettings(seed=seed)).synthetic
                for m, p, s in (("ppgn", ppgn, settings), ("ppgn_untrained_generator", untrained_like(ppgn, seed), settings),
                                ("ppgn_no_prior", ppgn, SamplerSettings(steps=args.steps, every=20, seed=seed, eps1=0.0, init=args.init))):
                    ch = sample(p, condition_function(model, unit), args.chains, s, start)
                    keep = [i for i, st in enumerate(ch.steps) if st > burn]
                    made[m] = ch.samples[:, keep].flatten(0, 1)
                    per_chain[m] = len(keep)
                for m, imgs in made.items():
                    if m == "real" and seed:
                        continue
                    with torch.no_grad():
                        a = act(imgs).numpy()
                    feats, probs = judge(judge_net, imgs)
                    pooled[m].append(feats)
                    n = len(imgs)
                    d = np.linalg.norm(feats[:, None] - feats[None], axis=2)
                    member = facet_membership(emb, found.labels, embed(model, imgs, "fc"))
                    row = {"unit": name, "method": m, "seed": seed, "samples": n,
                           "activation_fraction": round(float(a.mean() / best), 4),
                           "diversity": round(float(d.sum() / (n * (n - 1))), 4) if n > 1 else None,
                           "real_facets": found.k, "facets_reached": len({int(f) for f in member if f >= 0}),
                           "in_a_facet": round(float((member >= 0).mean()), 4),
                           "confidence": round(float(probs.max(1).mean()), 4)}
                    if pair:
                        said = probs.argmax(1)[probs.max(1) > 0.5]
                        row["digits_covered"] = len({int(v) for v in said} & set(pair))
                        row["on_class"] = round(float(np.isin(probs.argmax(1), pair).mean()), 4)
                    if m in per_chain:  # does one chain visit several facets (the paper's mixing claim)?
                        visits = member.reshape(-1, per_chain[m])
                        row["facets_per_chain"] = round(float(np.mean([len({int(f) for f in v if f >= 0}) for v in visits])), 4)
                    rows.append(row)
            print(f"{name}: done at {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    def mean(m: str, key: str, where=lambda r: True) -> float | None:
        vals = [r[key] for r in rows if r["method"] == m and r.get(key) is not None and where(r)]
        return round(float(np.mean(vals)), 4) if vals else None

    summary = {}
    n_match = min(sum(len(f) for f in pooled[m]) for m in methods)
    gen = np.random.default_rng(0)
    for m in methods:
        feats = np.concatenate(pooled[m])
        matched = [frechet(feats[gen.choice(len(feats), n_match, replace=False)], real_feats) for _ in range(10)]
        summary[m] = {
            "activation_fraction": mean(m, "activation_fraction"), "diversity": mean(m, "diversity"),
            "facets_reached_share": round(float(np.mean([r["facets_reached"] / r["real_facets"] for r in rows if r["method"] == m])), 4),
            "in_a_facet": mean(m, "in_a_facet"), "confidence": mean(m, "confidence"),
            "digits_covered_of_2": mean(m, "digits_covered", lambda r: "digits_covered" in r),
            "on_class": mean(m, "on_class", lambda r: "on_class" in r),
            "frechet_all": round(frechet(feats, real_feats), 3), "frechet_matched_n": round(float(np.mean(matched)), 3),
            "facets_per_chain": mean(m, "facets_per_chain"),
            "facets_per_chain_multi_facet_units": mean(m, "facets_per_chain", lambda r: r["real_facets"] > 1),
            "samples_per_unit_seed": round(float(np.mean([r["samples"] for r in rows if r["method"] == m])), 2),
        }
    provenance.emit({"setting": {"images": len(x), "condition_cnn_accuracy": round(cnn_acc, 4), "judge_accuracy": round(judge_acc, 4),
                      "units": [u[0] for u in units], "seeds": args.seeds, "generators": args.generators, "ppgn_epochs": args.ppgn_epochs,
                      "chains": args.chains, "steps": args.steps, "init": args.init, "kept_after_step": args.steps // 2, "frechet_matched_n": n_match,
                      "ppgn_training": [p.info for p in ppgns], "seconds": round(time.time() - t0, 1)},
          "summary": summary, "rows": rows}, provenance.out_path(args.out, "ppgn_compare"))


if __name__ == "__main__":
    main()
