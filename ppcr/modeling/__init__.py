"""The PPCR model: LLaVA-1.5 + two LoRA adapters + PPCR heads + SAM (docs/design.md, "Pipeline").

Typical use::

    from ppcr.modeling import build_model, PPCRProcessor, PPCRSample
    model = build_model(recipe)                      # or PPCRModel.from_pretrained(directory)
    processor = PPCRProcessor.from_model(model)
    output = model(processor(samples, rng))          # training: output.loss, output.losses
    features = model.encode_images(processor.images([image]))     # inference: encode once ...
    prediction = model.segment(features, processor.texts(expressions, [0] * len(expressions)))

Names are imported lazily so that ``import ppcr.modeling`` does not import torch.
"""

from __future__ import annotations

from ppcr.lazy import lazy_getattr

_LAZY = {
    "build_model": "ppcr.modeling.build",
    "PPCRModel": "ppcr.modeling.model",
    "ImageFeatures": "ppcr.modeling.model",
    "PPCRPrediction": "ppcr.modeling.model",
    "PPCROutput": "ppcr.modeling.model",
    "PPCRProcessor": "ppcr.modeling.processor",
    "PPCRSample": "ppcr.modeling.processor",
    "PPCRBatch": "ppcr.modeling.batch",
    "ImageInputs": "ppcr.modeling.batch",
    "TextInputs": "ppcr.modeling.batch",
    "StageInputs": "ppcr.modeling.batch",
    "PPCRConfig": "ppcr.modeling.config",
    "TokenIds": "ppcr.modeling.config",
    "parameter_rows": "ppcr.modeling.summary",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("ppcr.modeling", _LAZY)
