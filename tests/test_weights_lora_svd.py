"""LoRA adapters recovered from merged checkpoints by truncated SVD, loadable by peft."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights.adapter_files import ADAPTER_WEIGHTS, save_peft_adapter
from ppcr.weights.glamm_mapping import GLAMM
from ppcr.weights.key_mapping import map_tensors
from ppcr.weights.lora_svd import (
    EXACT_UP_TO,
    LORA_TARGET_REGEX,
    extract_adapter,
    extract_lora,
    language_model_qv_modules,
    summarize,
)
from ppcr.weights.report import MappingReport
from ppcr.weights.shards import iter_tensors
from tests.weights_builders import (
    BASE_VOCAB,
    GLAMM_VOCAB,
    LAYERS,
    GlammLike,
    glamm_release_pair,
    tiny_llava,
    write_glamm,
)


def planted(rows: int, cols: int, rank: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A base matrix and a tuned one that differs by ``scale · B @ A`` of exactly ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=generator)
    lora_b = torch.randn(rows, rank, generator=generator) * 0.1
    lora_a = torch.randn(rank, cols, generator=generator) * 0.1
    return base + scale * lora_b @ lora_a, base


def test_planted_rank_8_delta_is_recovered() -> None:
    tuned, base = planted(96, 64, rank=8, scale=2.0, seed=0)
    lora_a, lora_b, report = extract_lora(tuned, base, 8, alpha=16, module="m")
    assert lora_a.shape == (8, 64) and lora_b.shape == (96, 8) and lora_a.dtype == torch.float32
    delta = tuned.double() - base.double()
    rebuilt = 2.0 * lora_b.double() @ lora_a.double()
    measured = float(torch.linalg.matrix_norm(delta - rebuilt) / torch.linalg.matrix_norm(delta))
    assert measured < 1e-5 and report.relative_error < 1e-5
    assert report.relative_error == pytest.approx(measured, rel=1e-6, abs=1e-12)
    assert report.energy > 1 - 1e-10 and report.method == "exact" and report.shape == (96, 64)
    # Singular values are split evenly: A Aᵀ = Bᵀ B = diag(σ / scale).
    gram_a, gram_b = lora_a.double() @ lora_a.double().T, lora_b.double().T @ lora_b.double()
    assert torch.allclose(gram_a, gram_b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gram_a, torch.diag(torch.diagonal(gram_a)), atol=1e-6)
    sigma = torch.linalg.svdvals(delta)[:8]
    assert torch.allclose(torch.diagonal(gram_a), sigma / 2.0, rtol=1e-5)


def test_full_rank_perturbation_reports_its_large_error_honestly() -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(64, 64, generator=generator)
    tuned = base + torch.randn(64, 64, generator=generator)
    _, _, report = extract_lora(tuned, base, 8, alpha=16)
    sigma = torch.linalg.svdvals(tuned.double() - base.double())
    optimal = float(torch.sqrt((sigma[8:] ** 2).sum() / (sigma**2).sum()))
    assert optimal > 0.7  # a random square matrix is far from rank 8
    assert report.relative_error == pytest.approx(optimal, rel=1e-5)
    assert report.energy == pytest.approx(1 - optimal**2, rel=1e-5)
    assert summarize([report])["max_relative_error"] == report.relative_error


def test_bf16_rounding_noise_is_reported_and_mostly_removed() -> None:
    """Like GLaMM's release: GranD stored in bf16, the LoRA merged into that bf16 weight and stored
    in bf16 again (``(W_bf16.float() + Δ).bfloat16()``), delta 5 % of the weights."""
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(256, 256, generator=generator) * 0.02
    true_delta = torch.randn(256, 8, generator=generator) @ torch.randn(8, 256, generator=generator)
    true_delta = true_delta * (0.05 * base.norm() / true_delta.norm())
    stored_base = base.bfloat16()
    stored_tuned = (stored_base.float() + true_delta).bfloat16()
    lora_a, lora_b, report = extract_lora(stored_tuned, stored_base, 8, alpha=16)
    stored_delta = stored_tuned.double() - stored_base.double()
    noise = float((stored_delta - true_delta.double()).norm() / true_delta.double().norm())
    recovered = float((2 * lora_b.double() @ lora_a.double() - true_delta.double()).norm() / true_delta.double().norm())
    assert report.relative_error > 1e-3  # the noise is visible in the report, not hidden
    assert report.relative_error == pytest.approx(noise, rel=0.1)
    assert recovered < noise / 3  # rank truncation removes most of the rounding noise


def test_randomized_svd_matches_the_exact_one_on_large_matrices() -> None:
    size = EXACT_UP_TO + 128
    tuned, base = planted(size, size, rank=8, scale=2.0, seed=2)
    tuned = tuned + 1e-4 * torch.randn(size, size, generator=torch.Generator().manual_seed(3))
    state = torch.random.get_rng_state()
    _, _, fast = extract_lora(tuned, base, 8, alpha=16)  # auto → lowrank at this size
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert fast.method == "lowrank"
    small_t, small_b = tuned[:512, :384], base[:512, :384]
    _, _, exact = extract_lora(small_t, small_b, 8, alpha=16, method="exact")
    _, _, lowrank = extract_lora(small_t, small_b, 8, alpha=16, method="lowrank")
    assert lowrank.relative_error == pytest.approx(exact.relative_error, rel=1e-3)
    assert fast.relative_error < 1e-2 and fast.energy > 0.9999


def test_zero_delta_gives_a_zero_adapter() -> None:
    base = torch.randn(8, 6)
    lora_a, lora_b, report = extract_lora(base.clone(), base, 2)
    assert not lora_a.any() and not lora_b.any()
    assert report.relative_error == 0.0 and report.energy == 1.0 and report.delta_norm == 0.0


def test_bad_inputs_are_checkpoint_errors() -> None:
    with pytest.raises(CheckpointError, match="differ"):
        extract_lora(torch.zeros(4, 5), torch.zeros(5, 4), 2, module="q")
    with pytest.raises(CheckpointError, match="rank 9 must be between 1 and 4"):
        extract_lora(torch.zeros(4, 5), torch.zeros(4, 5), 9)
    with pytest.raises(CheckpointError, match="NaN"):
        extract_lora(torch.full((4, 5), float("nan")), torch.zeros(4, 5), 2)


def peft_saved_keys(tmp_path: Path, rank: int) -> set[str]:
    """The keys peft itself writes for a LoRA on the LLM's q/v of transformers-5 LLaVA."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    model = get_peft_model(tiny_llava(BASE_VOCAB + len(GLAMM_VOCAB)), LoraConfig(r=rank, target_modules=LORA_TARGET_REGEX))
    model.save_pretrained(tmp_path / "peft-reference")
    with safe_open(str(tmp_path / "peft-reference" / ADAPTER_WEIGHTS), "pt") as handle:
        return set(handle.keys())


def mapped(folder: Path, report: MappingReport, label: str, component: str = "llava"):
    """The renamed tensors of one component of a GLaMM checkpoint, streamed."""
    stream = map_tensors(iter_tensors(folder), GLAMM, report, label)
    return ((d.target, t) for d, t in stream if d.component == component)


def test_adapter_from_two_glamm_checkpoints_reproduces_the_tuned_model(tmp_path: Path) -> None:
    """GranD-like base + RefSeg-like tuned (rank-8 q/v deltas, alpha 16) → adapter → peft reproduces RefSeg."""
    from peft import PeftModel

    rank, alpha = 8, 16
    # fp32 storage here so the recovered delta is exact; real releases are bf16 (tested above).
    # head_scale 0: only the q/v LoRA differs, so the adapter alone must turn GranD into RefSeg.
    grand, refseg = glamm_release_pair(dict(GlammLike(with_vision_tower=True, seed=0).state_dict()), rank=rank,
                                       alpha=alpha, head_scale=0.0, seed=11)
    modules = language_model_qv_modules(LAYERS)
    base_dir = write_glamm(tmp_path / "grand", grand, shards=2)
    tuned_dir = write_glamm(tmp_path / "refseg", refseg, shards=3)
    generator = torch.Generator().manual_seed(11)

    state, reports = extract_adapter(
        mapped(tuned_dir, MappingReport(), "refseg"), mapped(base_dir, MappingReport(), "grand"),
        modules, rank, alpha,
    )
    assert [r.module for r in reports] == modules
    assert max(r.relative_error for r in reports) < 1e-5
    assert set(state) == peft_saved_keys(tmp_path, rank)
    adapter_dir = save_peft_adapter(tmp_path / "ppcr" / "semantic", state, rank=rank, alpha=alpha)

    def llava_from(folder: Path):
        model = tiny_llava(BASE_VOCAB + len(GLAMM_VOCAB), seed=99)
        model.load_state_dict(dict(mapped(folder, MappingReport(), "x")), strict=True)
        return model.eval()

    tuned_llava = llava_from(tuned_dir)
    peft_model = PeftModel.from_pretrained(llava_from(base_dir), str(adapter_dir), adapter_name="semantic").eval()
    tokens = torch.randint(0, BASE_VOCAB, (2, 7), generator=generator)
    hidden = torch.randn(2, 7, 16, generator=generator)
    with torch.no_grad():
        for name in modules:
            expected = tuned_llava.get_submodule(name)(hidden)
            got = peft_model.base_model.model.get_submodule(name)(hidden)
            assert torch.allclose(got, expected, atol=1e-5), name
        logits = peft_model(input_ids=tokens).logits
        assert torch.allclose(logits, tuned_llava(input_ids=tokens).logits, atol=1e-4)
        with peft_model.disable_adapter():
            assert not torch.allclose(peft_model(input_ids=tokens).logits, logits, atol=1e-3)


def test_extraction_streams_and_holds_only_pending_pairs() -> None:
    """Items the extractor does not need are released at once; q/v weights only until their partner arrives."""
    generator = torch.Generator().manual_seed(5)
    modules = language_model_qv_modules(3)
    names = []
    for module in modules:
        names += [f"{module}.weight", module.replace("q_proj", "k_proj").replace("v_proj", "o_proj") + ".weight"]
    base = {n: torch.randn(6, 6, generator=generator) for n in names}
    tuned = {n: w + 0.1 * torch.randn(6, 1, generator=generator) @ torch.randn(1, 6, generator=generator) for n, w in base.items()}
    refs: list[weakref.ref] = []
    most_alive = 0

    def watched(state):
        nonlocal most_alive
        for name, tensor in state.items():
            most_alive = max(most_alive, sum(r() is not None for r in refs))
            copy_ = tensor.clone()
            refs.append(weakref.ref(copy_))
            yield name, copy_
            del copy_

    out, reports = extract_adapter(watched(tuned), watched(base), modules, 1, 1.0)
    assert len(out) == 2 * len(modules) and max(r.relative_error for r in reports) < 1e-5
    assert most_alive <= 3, f"{most_alive} streamed tensors were alive at once"


def test_missing_target_module_is_reported() -> None:
    modules = language_model_qv_modules(1)
    base = {f"{m}.weight": torch.randn(4, 4) for m in modules}
    tuned = {k: v + 1 for k, v in base.items() if "v_proj" not in k}
    with pytest.raises(CheckpointError, match=r"v_proj\.weight is missing from the tuned checkpoint"):
        extract_adapter(iter(tuned.items()), iter(base.items()), modules, 1, 1.0)
