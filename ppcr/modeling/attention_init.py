"""A larger init for the tiny LLM's attention query and key projections.

Why: transformers draws every weight with std ``initializer_range`` (0.02). In LLaVA-7B's
4096-wide layers that gives attention logits of order one (std² × width ≈ 1.6); in the tiny
model's 128-wide LLM it gives ≈ 0.05, so attention starts uniform and the query·key product, a
product of two small matrices, learns from a long plateau: the ``[BOX]`` state does not learn
to look up the named object within a CPU run (``benchmarks/probe_grounding.py``). Drawing the
query and key projections with std ≈ 1/sqrt(width) gives the tiny model the large one's start.
"""

from __future__ import annotations

import torch

from ppcr.errors import PPCRError

PROJECTIONS = ("q_proj", "k_proj")


@torch.no_grad()
def init_query_key(language_model: torch.nn.Module, std: float) -> None:
    """Redraw every ``q_proj``/``k_proj`` linear weight of ``language_model`` from N(0, std²)."""
    redrawn = 0
    for name, module in language_model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS and isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, std)
            redrawn += 1
    if not redrawn:
        raise PPCRError(f"llm_qk_init_std: {type(language_model).__name__} has no q_proj/k_proj linear layers")
