"""Write an extracted LoRA adapter as a peft adapter folder.

The folder is exactly what peft's ``save_pretrained`` produces (``adapter_config.json`` written by
peft's own ``LoraConfig``, weights in ``adapter_model.safetensors`` under peft's key names), so
``PeftModel.from_pretrained(model, folder, adapter_name=...)`` and ``load_adapter`` read it without
PPCR code. The folder is built beside its destination and moved into place at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ppcr.weights.lora_svd import LORA_TARGET_REGEX

if TYPE_CHECKING:
    import torch

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_peft_adapter(
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.05,
    target_modules: str | list[str] = LORA_TARGET_REGEX,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Save ``state_dict`` (peft key names) and a matching LoRA config into ``directory``."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from ppcr.io import atomic_directory

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    with atomic_directory(directory) as tmp:
        config.save_pretrained(str(tmp))
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return Path(directory)
