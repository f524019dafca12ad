"""Steering sections of feature pages, precomputed so the site stays static and self-contained.

For each shown latent of a causal LM's dictionary: greedy continuations of one prompt without and
with the latent added at α = 2, 4, 8 × its typical firing value, and the next-token tokens most
promoted and suppressed. The computation is the core's (``featureforge.steering.feature_sections``,
shared with ``featureforge demo --causal``); the page renders ``record["steering"]``.
"""

from __future__ import annotations

from featureforge.steering import SECTION_ALPHAS as ALPHAS
from featureforge.steering import feature_sections as steering_sections

__all__ = ["ALPHAS", "steering_sections"]
