"""Streaming checkpoints from every supported layout, and refusing broken ones with one line."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights import shards
from ppcr.weights.shards import checkpoint_keys, iter_tensors, resolve_checkpoint
from tests.weights_builders import write_sharded, write_single


class NotATensor:
    """A picklable non-tensor object: weights_only loading must refuse it."""


def sample_state(count: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    state = {}
    for i in range(count):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        state[f"layer.{i}.weight"] = torch.randn(3 + i, 5, generator=generator).to(dtype)
    state["counter"] = torch.tensor([3, 1, 4], dtype=torch.int64)
    return state


def assert_same(streamed: list[tuple[str, torch.Tensor]], state: dict[str, torch.Tensor]) -> None:
    names = [name for name, _ in streamed]
    assert sorted(names) == sorted(state) and len(names) == len(set(names))
    for name, tensor in streamed:
        assert tensor.dtype == state[name].dtype
        assert torch.equal(tensor, state[name])


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_sharded_checkpoint_streams_every_tensor_exactly(tmp_path: Path, fmt: str) -> None:
    state = sample_state()
    names = write_sharded(tmp_path, state, 3, fmt)
    checkpoint = resolve_checkpoint(tmp_path)
    assert [p.name for p in checkpoint.shards] == names
    assert_same(list(iter_tensors(tmp_path)), state)
    assert sorted(checkpoint_keys(tmp_path)) == sorted(state)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_single_file_checkpoint_streams_from_directory_and_from_file(tmp_path: Path, fmt: str) -> None:
    state = sample_state()
    path = write_single(tmp_path, state, fmt)
    assert_same(list(iter_tensors(tmp_path)), state)
    assert_same(list(iter_tensors(path)), state)
    assert sorted(checkpoint_keys(path)) == sorted(state)


def test_plain_pth_file_like_sam(tmp_path: Path) -> None:
    state = sample_state()
    torch.save(state, tmp_path / "sam_vit_b_01ec64.pth")
    assert_same(list(iter_tensors(tmp_path / "sam_vit_b_01ec64.pth")), state)
    assert_same(list(iter_tensors(tmp_path)), state)  # a folder with exactly one .pth


def test_legacy_non_zip_pickle_loads_without_mmap(tmp_path: Path) -> None:
    state = sample_state()
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert_same(list(iter_tensors(tmp_path / "old.pth")), state)


def test_state_dict_wrapped_under_model_is_unwrapped(tmp_path: Path) -> None:
    state = sample_state()
    torch.save({"model": state, "epoch": 3}, tmp_path / "train.pth")
    assert_same(list(iter_tensors(tmp_path / "train.pth")), state)


def test_hub_id_resolves_from_the_local_cache_only(tmp_path: Path) -> None:
    state = sample_state()
    repo = tmp_path / "cache" / "models--someorg--tiny-model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_single(repo / "snapshots" / commit, state, "safetensors")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    checkpoint = resolve_checkpoint("someorg/tiny-model", cache_dir=tmp_path / "cache")
    assert checkpoint.root == repo / "snapshots" / commit
    assert_same(list(iter_tensors(checkpoint)), state)


def test_hub_id_not_in_cache_is_a_checkpoint_error_with_a_hint(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(k) or real(*a, **k))
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint("someorg/absent-model", cache_dir=tmp_path / "empty-cache")
    assert calls and all(call["local_files_only"] is True for call in calls)  # never downloads
    assert "nor in the local Hugging Face cache" in one_line(error)
    assert "local directory" in error.value.hint and "hf download someorg/absent-model" in error.value.hint


def test_only_one_shard_is_open_and_yielded_tensors_are_not_retained(tmp_path: Path, monkeypatch) -> None:
    """Shard k+1 is opened only after every tensor of shard k was handed out, and the reader
    keeps no reference to tensors it has yielded: at most one shard is in memory at a time."""
    for fmt in ("bin", "safetensors"):
        folder = tmp_path / fmt
        state = sample_state(12)
        write_sharded(folder, state, 4, fmt)
        weight_map = resolve_checkpoint(folder).weight_map
        events: list[tuple[str, str]] = []
        real_pickle, real_safe = shards._load_pickle, shards._open_safetensors
        monkeypatch.setattr(shards, "_load_pickle", lambda p: events.append(("open", p.name)) or real_pickle(p))
        monkeypatch.setattr(shards, "_open_safetensors", lambda p: events.append(("open", p.name)) or real_safe(p))
        alive: list[weakref.ref] = []
        most_alive = 0
        for name, tensor in iter_tensors(folder):
            events.append(("yield", weight_map[name]))
            alive.append(weakref.ref(tensor))
            del tensor
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        monkeypatch.undo()
        opened = [shard for kind, shard in events if kind == "open"]
        assert opened == sorted(set(weight_map.values()))
        current = None
        for kind, shard in events:
            if kind == "open":
                current = shard
            else:
                assert shard == current, f"{fmt}: {shard} was read while {current} was the open shard"
        # The consumer dropped every tensor: at most the one just yielded may still be referenced.
        assert most_alive <= 1, f"{fmt}: the reader retained {most_alive} yielded tensors"


def test_missing_shard_is_reported_before_anything_is_read(tmp_path: Path) -> None:
    write_sharded(tmp_path, sample_state(), 3, "bin")
    (tmp_path / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(tmp_path)
    assert one_line(error) == "shard pytorch_model-00002-of-00003.bin listed in the index is missing"
    with pytest.raises(CheckpointError):
        next(iter_tensors(tmp_path))


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_truncated_shard_is_corrupt(tmp_path: Path, fmt: str) -> None:
    names = write_sharded(tmp_path, sample_state(), 2, fmt)
    damaged = tmp_path / names[1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        list(iter_tensors(tmp_path))
    assert f"{damaged} is corrupt or truncated" in one_line(error)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors", "weights.pth"])
def test_garbage_file_is_corrupt(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"this is not a checkpoint" * 20)
    with pytest.raises(CheckpointError) as error:
        list(iter_tensors(tmp_path))
    assert "is corrupt or truncated" in one_line(error)


def test_pickle_with_non_tensor_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        list(iter_tensors(tmp_path))
    assert "contains pickled objects other than tensors" in one_line(error)


def test_pickle_of_plain_non_tensor_values_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": [0.1]}, tmp_path / "run.pth")
    with pytest.raises(CheckpointError) as error:
        list(iter_tensors(tmp_path / "run.pth"))
    assert "is not a state dict of tensors" in one_line(error)


def test_index_key_absent_from_its_shard(tmp_path: Path) -> None:
    names = write_sharded(tmp_path, sample_state(), 2, "safetensors")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost.weight"] = names[0]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as error:
        list(iter_tensors(tmp_path))
    assert one_line(error).startswith(f"tensor ghost.weight listed in the index for shard {names[0]} is not in that shard")


def test_corrupt_index_json(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin.index.json").write_text("{not json")
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(tmp_path)
    assert "cannot read" in one_line(error)


@pytest.mark.parametrize("content", [None, "README.md", "two_pth"])
def test_folder_without_weights_is_not_a_checkpoint(tmp_path: Path, content: str | None) -> None:
    if content == "README.md":
        (tmp_path / "README.md").write_text("hello")
    elif content == "two_pth":
        torch.save({"a": torch.zeros(1)}, tmp_path / "a.pth")
        torch.save({"a": torch.zeros(1)}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(tmp_path)
    assert "is not a checkpoint directory" in one_line(error)


def test_nonexistent_local_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(tmp_path / "nowhere")
    assert "does not exist" in one_line(error)
