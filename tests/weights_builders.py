"""Builders shared by the tests/test_weights_* files: tiny real models and checkpoint writers.

No tests here. Checkpoints are written in the real on-disk layouts (index JSON + numbered shards)
by code independent of ``ppcr.weights``, from tiny random instances of the real classes
(transformers' LLaVA/CLIP/Llama, segment-anything's SAM), so key names are the genuine ones.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ppcr.modeling.sam import sam_modeling

HIDDEN = 16
VISION_HIDDEN = 8
LAYERS = 2
BASE_VOCAB = 32
# GLaMM's added tokens, in GLaMM's order (its train.py), after the base vocabulary.
GLAMM_TOKENS = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]
GLAMM_VOCAB = {token: BASE_VOCAB + i for i, token in enumerate(GLAMM_TOKENS)}
# A PPCR-like tokenizer: llava-hf's <image>/<pad> first, then PPCR's tokens; embedding padded to 48.
PPCR_TOKENS = ["<image>", "<pad>", "[SEG]", "<im_start>", "<im_end>", "[BOX]", "<sem>"]
PPCR_VOCAB = {token: BASE_VOCAB + i for i, token in enumerate(PPCR_TOKENS)}
PPCR_ROWS = 48
SAM_DIM = 16


def text_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=8,
    )


def tiny_llava(vocab_size: int = PPCR_ROWS, seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=vision_config(), text_config=text_config(vocab_size), image_token_index=BASE_VOCAB
    )
    return LlavaForConditionalGeneration(config).eval()


def tiny_clip(seed: int = 0):
    """A full CLIPModel (text + vision), as openai/clip-vit-large-patch14-336 is stored."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=20, max_position_embeddings=10, projection_dim=8, bos_token_id=0,
                eos_token_id=1, pad_token_id=1)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config().to_dict())).eval()


def tiny_sam(seed: int = 0):
    modeling = sam_modeling()
    torch.manual_seed(seed)
    encoder = modeling.ImageEncoderViT(
        depth=2, embed_dim=32, img_size=64, mlp_ratio=2, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,),
        window_size=2, out_chans=SAM_DIM,
    )
    prompt = modeling.PromptEncoder(
        embed_dim=SAM_DIM, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
    )
    decoder = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=SAM_DIM, mlp_dim=32, num_heads=2),
        transformer_dim=SAM_DIM, iou_head_depth=3, iou_head_hidden_dim=16,
    )
    return modeling.Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53],
                        pixel_std=[58.395, 57.12, 57.375]).eval()


def semantic_proj() -> nn.Module:
    """PPCR's semantic prompt head as the model engineer builds it (Linear-ReLU-Linear)."""
    holder = nn.Module()
    holder.semantic_proj = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, SAM_DIM))
    return holder


class GlammLike(nn.Module):
    """Module tree of GLaMMForCausalLM (as GLaMM's model/GLaMM.py builds it), with GLaMM's key names."""

    def __init__(self, with_vision_tower: bool, seed: int = 0):
        super().__init__()
        from transformers import CLIPVisionModel, LlamaModel

        torch.manual_seed(seed)
        self.model = LlamaModel(text_config(BASE_VOCAB + len(GLAMM_TOKENS)))
        self.model.mm_projector = nn.Sequential(nn.Linear(VISION_HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN))
        if with_vision_tower:
            # Old transformers' CLIPVisionModel had a ``vision_model`` level; rebuild it.
            self.model.vision_tower = nn.Module()
            self.model.vision_tower.vision_tower = nn.Module()
            self.model.vision_tower.vision_tower.vision_model = CLIPVisionModel(vision_config())
        self.model.grounding_encoder = tiny_sam(seed)
        self.model.text_hidden_fcs = nn.ModuleList(
            [nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, SAM_DIM), nn.Dropout(0.0))]
        )
        self.model.region_encoder = nn.Module()
        self.model.region_encoder.mlvl_fuse = nn.Linear(VISION_HIDDEN, VISION_HIDDEN)
        self.model.region_encoder.roi_align = nn.Module()
        self.model.region_encoder.roi_align.updims = nn.Linear(VISION_HIDDEN, HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, BASE_VOCAB + len(GLAMM_TOKENS), bias=False)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """As GLaMM's merge script saves it: LLM and projector in bf16, SAM and heads in fp32,
        plus the persistent rotary buffer of old transformers."""
        state = {}
        for key, value in self.state_dict().items():
            keep_fp32 = key.startswith(("model.grounding_encoder.", "model.text_hidden_fcs.", "model.region_encoder."))
            state[key] = value.detach().clone() if keep_fp32 else value.detach().to(torch.bfloat16)
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
        return state


# --- writers for the real on-disk layouts -------------------------------------------------------


def split_shards(state: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    keys = list(state)
    size = -(-len(keys) // count)
    return [{k: state[k] for k in keys[i * size:(i + 1) * size]} for i in range(count)]


def write_sharded(directory: Path, state: dict[str, torch.Tensor], count: int, fmt: str) -> list[str]:
    """``pytorch_model-0000i-of-0000n.bin`` or ``model-0000i-of-0000n.safetensors`` + the index."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    prefix, suffix, index = (
        ("pytorch_model", "bin", "pytorch_model.bin.index.json")
        if fmt == "bin"
        else ("model", "safetensors", "model.safetensors.index.json")
    )
    weight_map, names = {}, []
    for i, shard in enumerate(split_shards(state, count), start=1):
        name = f"{prefix}-{i:05d}-of-{count:05d}.{suffix}"
        names.append(name)
        if fmt == "bin":
            torch.save(shard, directory / name)
        else:
            save_file({k: v.contiguous() for k, v in shard.items()}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (directory / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return names


def write_single(directory: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        path = directory / "pytorch_model.bin"
        torch.save(state, path)
    else:
        path = directory / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def write_glamm(directory: Path, state: dict[str, torch.Tensor], shards: int = 3) -> Path:
    """A GLaMM release folder: sharded .bin + index, config.json and added_tokens.json."""
    write_sharded(directory, state, shards, "bin")
    (directory / "added_tokens.json").write_text(json.dumps(GLAMM_VOCAB, indent=2))
    (directory / "config.json").write_text(json.dumps({"architectures": ["GLaMMForCausalLM"], "model_type": "llava"}))
    return directory


# GLaMM's RefSeg fine-tuning (train_ft.py --pretrained; glamm.md §3): a LoRA on the LLM's q/v
# projections, and these parts trained in full. Everything else stays frozen. Written out here,
# independently of ppcr.weights.
GLAMM_LORA_KEY = re.compile(r"(?:base_model\.model\.)?model\.layers\.\d+\.self_attn\.(?:q_proj|v_proj)\.weight")
GLAMM_FULLY_TRAINED = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs", "region_encoder")


def glamm_release_pair(
    grand: dict[str, torch.Tensor], *, rank: int = 8, alpha: int = 16, head_scale: float = 1.0, seed: int = 21
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(GranD, RefSeg) state dicts: RefSeg fine-tuned from ``grand`` as GLaMM did it.

    ``grand`` is GranD as released (``released_state_dict()``: LLM bf16, SAM and heads fp32). Each
    q/v matrix gets a rank-``rank`` LoRA merged the way GLaMM merged it, into the already stored
    weight: ``(W.float() + (alpha/rank)·B@A).to(W.dtype)``, i.e. ``(W_bf16.float() + Δ).bfloat16()``;
    the fully trained parts get a full-rank change of size ``head_scale``, stored back in their
    dtype; every frozen tensor is copied unchanged (bit-identical).
    """
    generator = torch.Generator().manual_seed(seed)
    refseg = {}
    with torch.no_grad():
        for key, weight in grand.items():
            if GLAMM_LORA_KEY.fullmatch(key):
                lora_b = torch.randn(weight.shape[0], rank, generator=generator) * 0.2
                lora_a = torch.randn(rank, weight.shape[1], generator=generator) * 0.2
                change = (alpha / rank) * lora_b @ lora_a
            elif any(part in key for part in GLAMM_FULLY_TRAINED):
                change = torch.randn(weight.shape, generator=generator) * head_scale
            else:
                refseg[key] = weight.clone()
                continue
            refseg[key] = (weight.float() + change).to(weight.dtype)
    return grand, refseg
