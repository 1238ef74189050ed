"""The KV-cache keyword follows the installed transformers (``cache`` since 5.24, else ``past_key_values``)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from ppcr.modeling.kv_cache import cache_keyword, returned_cache


class NewStyle:
    def forward(self, inputs_embeds=None, cache=None, use_cache=False):
        return None


class OldStyle:
    def forward(self, inputs_embeds=None, past_key_values=None, use_cache=False):
        return None


def test_keyword_is_read_from_the_forward_signature():
    assert cache_keyword(NewStyle) == "cache"
    assert cache_keyword(OldStyle) == "past_key_values"


def test_returned_cache_reads_either_output_field():
    cache = object()
    assert returned_cache(SimpleNamespace(cache=cache)) is cache
    assert returned_cache(SimpleNamespace(past_key_values=cache)) is cache


def test_installed_llama_takes_the_keyword_without_a_deprecation_warning():
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaModel(config).eval()
    embeds = torch.randn(1, 5, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        prefix = model(inputs_embeds=embeds[:, :3], use_cache=True)
        cached = {cache_keyword(LlamaModel): returned_cache(prefix)}
        suffix = model(inputs_embeds=embeds[:, 3:], use_cache=True, **cached)
        full = model(inputs_embeds=embeds, use_cache=False)
    assert torch.allclose(suffix.last_hidden_state, full.last_hidden_state[:, 3:], atol=1e-5)
