"""The two named LoRA adapters on LLaVA's language model: ``semantic`` (LoRA A) and ``spatial`` (LoRA B).

Both sit on the same frozen LLaVA and target only the language model's attention projections
(``model.language_model.layers.N.self_attn.{q_proj,v_proj}``), selected by a full-match regex so
CLIP's and SAM's layers of the same names are never wrapped.

The pitfall (docs/design.md, "Adapter switching"): peft's ``set_adapter`` routes the forward
through one adapter *and* sets ``requires_grad=False`` on the other. One PPCR training step runs
stage 1 through ``semantic`` and stage 2 through ``spatial`` and back-propagates once; autograd
skips leaves whose ``requires_grad`` is False at backward time, so the adapter switched off
mid-step would silently get no gradient. :meth:`AdapterSet.use` therefore routes with peft's
``set_adapter`` and then restores every LoRA parameter's ``requires_grad`` as it was.

Saved layout = peft's: ``<dir>/<adapter>/adapter_config.json`` + ``adapter_model.safetensors``
(keys without the adapter name), loadable with ``PeftModel.from_pretrained(..., adapter_name=)``.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ppcr.config.schema import LoraSpec
from ppcr.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig, PeftModel

SEMANTIC = "semantic"
SPATIAL = "spatial"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def target_regex(modules: list[str]) -> str:
    """Full-match regex for the language model's attention projections named in ``modules``."""
    names = "|".join(re.escape(m) for m in modules)
    return rf"^model\.language_model\.layers\.\d+\.self_attn\.({names})$"


def lora_config(spec: LoraSpec, base_name_or_path: str | None = None) -> "LoraConfig":
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=target_regex(list(spec.target_modules)),
        bias="none",
        base_model_name_or_path=base_name_or_path,
    )


class AdapterSet:
    """The peft-wrapped LLaVA plus the names of its adapters and safe switching between them."""

    def __init__(self, peft_model: "PeftModel", names: tuple[str, ...]):
        self.peft_model = peft_model
        self.names = names

    @classmethod
    def attach(cls, llava, spec: LoraSpec, names: tuple[str, ...], base_name_or_path: str | None = None) -> "AdapterSet":
        """Wrap ``llava`` (in place) with one LoRA adapter per name, all trainable."""
        from peft import get_peft_model

        config = lora_config(spec, base_name_or_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(llava, config, adapter_name=names[0])
            for name in names[1:]:
                peft_model.add_adapter(name, lora_config(spec, base_name_or_path))
        adapters = cls(peft_model, names)
        # Activate all so all are trainable, then route to the first one.
        peft_model.base_model.set_adapter(list(names))
        adapters.activate(names[0])
        return adapters

    # ------------------------------------------------------------------ parameters

    def parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The LoRA parameters of one adapter, by their in-memory name."""
        marker = f".{name}."
        return {
            n: p for n, p in self.peft_model.named_parameters() if "lora_" in n and marker in n
        }

    def all_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name in self.names for p in self.parameters(name).values()]

    # ------------------------------------------------------------------ routing

    def activate(self, name: str) -> None:
        """Route the forward through ``name`` without changing any ``requires_grad`` flag."""
        if name not in self.names:
            raise KeyError(f"no adapter {name!r}; have {self.names}")
        params = self.all_parameters()
        flags = [p.requires_grad for p in params]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.peft_model.base_model.set_adapter(name)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)

    @property
    def active(self) -> str:
        active = self.peft_model.base_model.active_adapter
        return active[0] if isinstance(active, list) else active

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Run a block through adapter ``name`` (gradient flags of both adapters are preserved)."""
        previous = self.active
        self.activate(name)
        try:
            yield
        finally:
            self.activate(previous)

    def route_checkpoint_recomputation(self, language_model: torch.nn.Module) -> None:
        """Make gradient checkpointing recompute each layer through the adapter it ran with.

        Adapter routing is global state, and the backward pass recomputes a stage-2 layer after
        the forward has switched back to the ``semantic`` adapter; a plain checkpoint would
        silently recompute it through the wrong adapter. Each checkpointed call of
        ``language_model`` (checkpointing already enabled) therefore records the adapter active
        at forward time and re-activates it for its recomputation.
        """

        def adapter_aware(checkpoint_func):
            def run(function, *args, **kwargs):
                name = self.active

                def routed(*a, **k):
                    if self.active == name:
                        return function(*a, **k)
                    with self.use(name):
                        return function(*a, **k)

                return checkpoint_func(routed, *args, **kwargs)

            run.ppcr_adapter_aware = True
            return run

        for module in language_model.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(module, "gradient_checkpointing", False) and func is not None:
                if not getattr(func, "ppcr_adapter_aware", False):
                    module._gradient_checkpointing_func = adapter_aware(func)

    # ------------------------------------------------------------------ persistence

    def save(
        self, directory: Path, base_name_or_path: str | None, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write each adapter in peft's layout under ``directory/<name>/``.

        ``state_dict`` (keys of the peft model's ``state_dict()``) replaces the live tensors.
        """
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        for name in self.names:
            out = directory / name
            out.mkdir(parents=True, exist_ok=True)
            state = get_peft_model_state_dict(
                self.peft_model, state_dict=state_dict, adapter_name=name, save_embedding_layers=False
            )
            state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            config = self.peft_model.peft_config[name].to_dict()
            config["base_model_name_or_path"] = base_name_or_path
            config["inference_mode"] = True
            config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
            (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def load(self, directory: Path) -> None:
        """Load each adapter's weights from ``directory/<name>/``; anything missing is an error."""
        from peft import set_peft_model_state_dict
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        for name in self.names:
            folder = directory / name
            weights = folder / ADAPTER_WEIGHTS
            config_path = folder / ADAPTER_CONFIG
            for path in (config_path, weights):
                if not path.is_file():
                    raise CheckpointError(f"missing {path}", hint="the checkpoint is incomplete; re-save it")
            try:
                saved = json.loads(config_path.read_text(encoding="utf-8"))
                state = load_file(str(weights))
            except (OSError, ValueError, SafetensorError) as error:
                raise CheckpointError(f"cannot read adapter {name!r} in {folder}: {error}") from None
            live = self.peft_model.peft_config[name]
            for key in ("r", "lora_alpha"):
                if saved.get(key) != getattr(live, key):
                    raise CheckpointError(
                        f"adapter {name!r} in {folder} has {key}={saved.get(key)!r}, the model expects {getattr(live, key)!r}"
                    )
            expected = len(self.parameters(name))
            if len(state) != expected:
                raise CheckpointError(
                    f"adapter {name!r} in {folder} has {len(state)} tensors, the model expects {expected}"
                )
            try:
                result = set_peft_model_state_dict(self.peft_model, state, adapter_name=name)
            except RuntimeError as error:
                raise CheckpointError(f"adapter {name!r} in {folder} does not fit the model: {str(error).splitlines()[0]}") from None
            if result.unexpected_keys:
                raise CheckpointError(
                    f"adapter {name!r} in {folder} has unexpected key(s) (e.g. {result.unexpected_keys[0]})"
                )
