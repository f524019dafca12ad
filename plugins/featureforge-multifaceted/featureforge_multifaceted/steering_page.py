"""Steering sections of feature pages, precomputed so the site stays static and self-contained.

For each shown latent of a causal LM's dictionary: greedy continuations of one prompt without and
with the latent added at α = 2, 4, 8 × its typical firing value, and the next-token tokens most
promoted and suppressed. Computed with the core's intervention model through the store source's
splice seam (``featureforge.steering.steer_live``); the page renders ``record["steering"]``.
"""

from __future__ import annotations

from typing import Any, Iterable

ALPHAS = (2.0, 4.0, 8.0)


def steering_sections(source: Any, dictionary: Any, store: Any, latents: Iterable[int], *, prompt: str, max_new_tokens: int,
                      alphas: Iterable[float] = ALPHAS) -> dict[int, dict[str, Any]]:
    """latent -> its steering section; empty when the source has no live causal LM to steer."""
    from featureforge.interventions import Intervention
    from featureforge.steering import steer_live, store_typical

    if source is None or not source.can_splice:
        return {}
    typical = store_typical(dictionary, store)
    sections: dict[int, dict[str, Any]] = {}
    with source.splice(dictionary) as live:
        if live.kind != "causal-lm":
            return {}
        for latent in latents:
            if float(typical[int(latent)]) <= 0:
                continue
            plans = [Intervention((int(latent),), "add", float(a)) for a in alphas]
            result = steer_live(live, dictionary, typical, plans, prompt, max_new_tokens=max_new_tokens, top=8)
            sections[int(latent)] = {
                "prompt": prompt,
                "clean": result.clean_text,
                "typical": result.typical[0],
                "steps": [{"alpha": o.alpha, "text": o.text, "kl": o.kl,
                           "promoted": [{"token": t.token, "gain": t.logprob_steered - t.logprob_clean} for t in o.promoted],
                           "suppressed": [{"token": t.token, "gain": t.logprob_steered - t.logprob_clean} for t in o.suppressed]}
                          for o in result.outcomes],
            }
    return sections
