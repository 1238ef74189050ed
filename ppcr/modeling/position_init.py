"""2-D sine-cosine position codes for a randomly initialised CLIP vision tower.

Why: a pretrained CLIP's learned position embeddings encode where each patch is; a random one's
(std 0.02, next to patch embeddings ~10× larger) hardly do, so a from-scratch tiny LLaVA must
first learn positions before its ``[BOX]`` state can say where anything is. Starting them as the
fixed 2-D sine-cosine codes of MAE's ViT (they stay trainable) removes that first hurdle.
"""

from __future__ import annotations

import torch


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """``grid²×dim`` codes in row-major patch order: half the channels encode y, half x."""
    if dim % 4:
        raise ValueError(f"sine-cosine position codes need a width divisible by 4, not {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(ys), encode(xs)], dim=1).float()


@torch.no_grad()
def init_clip_positions_sincos(vision_tower: torch.nn.Module) -> None:
    """Overwrite the patch rows of ``vision_tower``'s position embeddings (row 0, CLS, is kept)."""
    embeddings = vision_tower.embeddings
    table = embeddings.position_embedding.weight
    patches = table.shape[0] - 1
    grid = round(patches**0.5)
    if grid * grid != patches:
        raise ValueError(f"{patches} patch positions do not form a square grid")
    table[1:] = sincos_2d(grid, table.shape[1]).to(table)
