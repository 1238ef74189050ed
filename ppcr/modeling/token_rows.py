"""Trainable rows of ``embed_tokens`` / ``lm_head`` for the added tokens only.

GLaMM and LISA train the whole embedding and output matrices to learn ``[SEG]``; PPCR trains
only the rows of its own tokens (``[SEG]``, ``[BOX]``, ``<sem>``) and keeps the base rows
bit-identical, so the frozen base stays shareable. The rows live here as separate parameters
(initialised from the base rows at those ids) and override the base lookups:

- input side: the embedding of an added id is taken from :attr:`input_rows`;
- output side: the logit of an added id is ``h · output_rows[k]`` instead of the base row's.
"""

from __future__ import annotations

import torch
from torch import nn


class AddedTokenRows(nn.Module):
    def __init__(self, token_ids: tuple[int, ...], input_rows: torch.Tensor, output_rows: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.input_rows = nn.Parameter(input_rows.detach().clone())
        self.output_rows = nn.Parameter(output_rows.detach().clone())

    @classmethod
    def from_base(cls, token_ids: tuple[int, ...], embed: nn.Embedding, lm_head: nn.Linear) -> "AddedTokenRows":
        index = torch.tensor(token_ids, dtype=torch.long, device=embed.weight.device)
        return cls(token_ids, embed.weight.data[index], lm_head.weight.data[index])

    def embed(self, input_ids: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
        """``embed(input_ids)`` with the added ids' rows taken from :attr:`input_rows`."""
        embeds = embed(input_ids)
        rows = self.input_rows.to(embeds.dtype)
        for k in range(self.ids.numel()):
            hit = (input_ids == self.ids[k]).unsqueeze(-1)
            embeds = torch.where(hit, rows[k], embeds)
        return embeds

    def logits(self, hidden: torch.Tensor, lm_head: nn.Linear) -> torch.Tensor:
        """``lm_head(hidden)`` with the added ids' logits computed from :attr:`output_rows`."""
        logits = lm_head(hidden)
        added = hidden @ self.output_rows.to(hidden.dtype).t()
        return logits.index_copy(-1, self.ids, added.to(logits.dtype))
