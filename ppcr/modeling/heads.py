"""The small trainable heads between the LLM and SAM (docs/design.md, "Pipeline", "Variants").

- :class:`SemanticProjection` — h_sem (LLM width) → SAM's semantic prompt token (GLaMM's
  ``text_hidden_fcs``: Linear(d, d) → ReLU → Linear(d, sam_dim)).
- ``sem_to_input`` is a plain ``nn.Linear(d, d)`` built by the model: it writes h_sem into the
  ``<sem>`` slot of the spatial prompt.
- :class:`BoxMLP` — the paper's F_Map: P_box^seg → normalised (x1, y1, x2, y2) ∈ [0, 1]⁴ via
  Linear → ReLU → Linear(·, 4) → sigmoid (eq. 4).
- :class:`AttnBoxHead` — Table 3's attention-based alternative: P_box^seg is the query of a stack
  of self-attention + cross-attention layers over the image tokens (the projector outputs).
- :class:`PointerBoxHead` — our extension (``spatial_head: pointer``): P_box^seg points at an
  image token and each image token proposes a box around its patch; trained with ``loss.patch_ce``.
- :class:`StateStandardiser` — optional (``model.head_norm: batch``) per-feature standardisation
  of h_sem and P_box^seg before the heads, for a randomly initialised LLM (not in the paper).
"""

from __future__ import annotations

import torch
from torch import nn


class SemanticProjection(nn.Sequential):
    """h_sem → one SAM sparse prompt token.

    A ``Sequential`` so its keys (``0.weight``, ``2.weight``) mirror GLaMM's
    ``text_hidden_fcs.0.{0,2}.*`` one to one.
    """

    def __init__(self, hidden: int, sam_dim: int):
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, sam_dim))


class StateStandardiser(nn.Module):
    """Per-feature standardisation of LLM states before a head (``BatchNorm1d`` without affine).

    Why: a randomly initialised LLM's states at the [SEG]/[BOX] positions are nearly one common
    vector (per-sample spread ~0.16 of their RMS), so a head sees almost the same input for every
    sample and learns slowly; standardising each feature over the batch removes that common part
    (experiments/probe_shapes_learning.py, ``memorise``). Running statistics serve evaluation and
    single-sample training batches alike.
    """

    def __init__(self, hidden: int, momentum: float = 0.01):
        super().__init__()
        self.norm = nn.BatchNorm1d(hidden, affine=False, momentum=momentum)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.training and states.shape[0] < 2:
            # Batch statistics of one sample are undefined: use the running ones.
            norm = self.norm
            return nn.functional.batch_norm(states, norm.running_mean, norm.running_var, eps=norm.eps)
        return self.norm(states)


class BoxMLP(nn.Sequential):
    """F_Map: P_box^seg → normalised xyxy in [0, 1] (sigmoid keeps it resolution independent)."""

    def __init__(self, hidden: int):
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, p_box: torch.Tensor, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(p_box).sigmoid()


class _AttnBlock(nn.Module):
    """Pre-norm self-attention over the queries, cross-attention to the image tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = self.norm_self(queries)
        queries = queries + self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm_cross(queries)
        queries = queries + self.cross_attn(x, keys, keys, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class AttnBoxHead(nn.Module):
    """Box regression by attention: query = P_box^seg, keys/values = the image tokens.

    Both are projected from the LLM width to ``dim``; the image tokens get a learned positional
    embedding (one per token of the fixed CLIP grid) so the head can read positions. Output:
    sigmoid-normalised xyxy, like :class:`BoxMLP`.
    """

    def __init__(self, hidden: int, num_image_tokens: int, dim: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.query_in = nn.Linear(hidden, dim)
        self.key_in = nn.Linear(hidden, dim)
        self.key_pos = nn.Parameter(torch.zeros(1, num_image_tokens, dim))
        nn.init.normal_(self.key_pos, std=0.02)
        self.blocks = nn.ModuleList(_AttnBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.box = nn.Linear(dim, 4)

    def forward(self, p_box: torch.Tensor, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        if image_tokens is None:
            raise ValueError("AttnBoxHead needs the image tokens of each sample")
        queries = self.query_in(p_box).unsqueeze(1)
        keys = self.key_in(image_tokens.to(p_box.dtype)) + self.key_pos
        for block in self.blocks:
            queries = block(queries, keys)
        return self.box(self.norm(queries[:, 0])).sigmoid()


class PointerBoxHead(nn.Module):
    """Box by pointing (``spatial_head: pointer``; our extension of Table 3's attention family).

    The query P_box^seg scores every image token's state (the spatial stage's last-layer hidden
    states at the ``<image>`` positions, so with the question before the image they have already
    read it); every image token proposes a box around its own patch (centre within one patch of
    the patch centre, width and height as fractions of the image); the output is the
    softmax-weighted mean of the proposals. The scores are also returned as logits over patches,
    so ``loss.patch_ce`` can supervise the pointing directly. Why: a single hidden state regressed
    to four numbers, trained by L1 alone, learns to find a named object very slowly from random
    weights; scoring patches turns finding into classification, which a small model learns.
    """

    def __init__(self, hidden: int, dim: int):
        super().__init__()
        self.query = nn.Linear(hidden, dim)
        self.key = nn.Linear(hidden, dim)
        self.proposal = nn.Sequential(nn.Linear(hidden, dim), nn.GELU(), nn.Linear(dim, 4))
        self.scale = dim**-0.5

    def forward(
        self, p_box: torch.Tensor, image_states: torch.Tensor, anchors: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``p_box`` B×d, ``image_states`` B×P×d, ``anchors`` B×P×2 patch centres and ``cell`` B×2
        patch size (both in normalised original-image coordinates, see
        :class:`~ppcr.modeling.patch_grid.PatchGrid`) → (boxes B×4 xyxy in [0, 1], logits B×P)."""
        states = image_states.to(p_box.dtype)
        logits = torch.einsum("bd,bpd->bp", self.query(p_box), self.key(states)) * self.scale
        raw = self.proposal(states).float()
        centre = anchors.float() + torch.tanh(raw[..., :2]) * cell.float().unsqueeze(1)
        half = raw[..., 2:].sigmoid() / 2
        proposals = torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0)
        weights = logits.float().softmax(dim=-1)
        boxes = torch.einsum("bp,bpk->bk", weights, proposals)
        return boxes, logits
