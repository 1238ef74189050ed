"""The tiny model's tokenizer: a byte-level BPE trained offline on Shapes-Ref text.

The real model uses LLaVA-1.5's Llama tokenizer; the tiny model cannot download it, and a
32k-row vocabulary would dominate a model of 128 channels. So we train a small byte-level BPE
with the ``tokenizers`` library on the Shapes-Ref words plus every prompt template (byte-level:
any text still encodes, unseen words just take more tokens), and wrap it as a
``PreTrainedTokenizerFast`` with Llama's special tokens (``<unk> <s> </s>``, ``<pad>``) and
LLaVA's ``<image>``. It is saved with ``save_pretrained`` inside every tiny checkpoint, so a
trained model never depends on retraining the tokenizer. Training is deterministic.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


def training_corpus() -> list[str]:
    """Every text the tiny model will see, minus the expressions' combinatorics.

    Templates with their placeholders and PPCR tokens removed, the conversation words, and each
    Shapes-Ref word with and without a leading space (byte-level BPE keeps the space in the
    token, so " red" and "red" are different merges).
    """
    from ppcr.data import templates
    from ppcr.data.shapes.vocabulary import vocabulary

    lines: list[str] = []
    texts = [
        *templates.SEMANTIC_QUESTIONS,
        *templates.SEMANTIC_ANSWERS,
        *(q for qs in templates.SPATIAL_QUESTIONS.values() for q in qs),
        *templates.SPATIAL_ANSWERS,
        templates.llava_prompt("question", "answer"),
    ]
    removed = (templates.EXPRESSION, templates.SEG_TOKEN, templates.BOX_TOKEN, templates.SEM_TOKEN, templates.IMAGE_TOKEN)
    for text in texts:
        for token in removed:
            text = text.replace(token, " ")
        lines.append(text)
    words = vocabulary()
    # Repeat the words so their merges win over rare template fragments.
    for _ in range(8):
        lines.extend(words)
        lines.append(" " + " ".join(words))
    return lines


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train once per process and size (training is deterministic, so the cache is exact)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ppcr.data.templates import IMAGE_TOKEN

    specials = [UNK, BOS, EOS, PAD, IMAGE_TOKEN]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return tokenizer.to_str()


def train_tiny_tokenizer(vocab_size: int = 1024) -> "PreTrainedTokenizerFast":
    """The tiny tokenizer (``<image>`` included; the PPCR tokens are added by the caller).

    Each call returns a new, independent tokenizer object.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(int(vocab_size))),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=4096,
    )


# llava-hf/llava-1.5-7b-hf's tokenizer: Llama's 32000 SentencePiece entries, then <image> (32000)
# and <pad> (32001); <unk> 0, <s> 1, </s> 2.
LLAVA_BASE_VOCAB = 32000
STAND_IN = "stand-in"


@functools.lru_cache(maxsize=1)
def _stand_in_tokenizer_json() -> str:
    """The tiny BPE trained with Llama's three specials, its vocabulary filled up to 32000 entries."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ppcr.data.templates import IMAGE_TOKEN

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LLAVA_BASE_VOCAB,  # the corpus runs out of merges long before this
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    # Entries no merge produces: they only give the vocabulary llava-hf's size.
    for index in range(len(vocab), LLAVA_BASE_VOCAB):
        vocab[f"<unused{index}>"] = index
    filled = Tokenizer.from_str(json.dumps(data))
    filled.add_special_tokens([IMAGE_TOKEN, PAD])
    return filled.to_str()


def stand_in_llava_tokenizer() -> "PreTrainedTokenizerFast":
    """A tokenizer laid out like llava-1.5-7b-hf's, for the 7B architecture with random weights.

    Why: a real-size model needs LLaVA's tokenizer, which a machine without network (this one, or
    a GPU box checking speed) cannot download. This one has the same size (32002 entries) and the
    same special ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<image>`` 32000, ``<pad>`` 32001), so
    PPCR's tokens land on 32002-32004 as with the real one and the 32064-row embedding is used as
    it is; its merges are the tiny tokenizer's (Shapes-Ref words and the templates), the other
    entries are fillers that no text produces. Selected in a recipe by ``init.tokenizer: stand-in``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_stand_in_tokenizer_json()),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=4096,
    )
