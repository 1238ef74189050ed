"""Prompt templates: verbatim reference lists, placeholders, sampling vs fixed eval, LLaVA format."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from ppcr.data import templates as T
from ppcr.errors import DataError, PPCRError

_REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(
    os.environ.get("PPCR_REFERENCE_DIR")
    or next(
        (str(p) for p in (_REPO.parent / "shared" / "reference", Path("/work/shared/reference")) if p.is_dir()),
        "/work/shared/reference",
    )
)


def _reference(name: str) -> str:
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.skip(f"reference notes not available at {path} (set PPCR_REFERENCE_DIR)")
    return path.read_text(encoding="utf-8")


def _section(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    return text[begin : text.index(end, begin)]


def test_glamm_lists_match_reference_verbatim():
    text = _reference("glamm.md")
    block = _section(text, "`SEG_QUESTIONS` (16;", "`ANSWER_LIST` (5)")
    questions = re.findall(r'^\d+\. "(.+)"$', block, flags=re.M)
    assert len(questions) == 16
    assert T.GLAMM_SEG_QUESTIONS == tuple(questions)
    answer_line = _section(text, "`ANSWER_LIST` (5):", "\n")
    assert T.SEMANTIC_ANSWERS == tuple(re.findall(r'"([^"]+)"', answer_line))


def test_lisa_lists_match_reference_without_image_prefix():
    text = _reference("lisa.md")
    section = _section(text, "## 2. Prompt templates", "Refer-seg specifics")

    def items(start: str, end: str) -> list[str]:
        block = _section(section, start, end)
        return re.findall(r'^\d+\. `"(.+)"`$', block, flags=re.M)

    short = items("`SHORT_QUESTION_LIST`:", "`LONG_QUESTION_LIST`:")
    long = items("`LONG_QUESTION_LIST`:", "`EXPLANATORY_QUESTION_LIST`")
    answers = re.findall(r'^\d+\. `"(.+)"`$', section[section.index("`ANSWER_LIST`:") :], flags=re.M)
    prefix = "<image>\\n"  # written as a literal backslash-n in the notes
    assert all(q.startswith(prefix) for q in short + long)
    assert T.LISA_SHORT_QUESTIONS == tuple(q[len(prefix) :] for q in short)
    assert T.LISA_LONG_QUESTIONS == tuple(q[len(prefix) :] for q in long)
    assert T.SEMANTIC_ANSWERS == tuple(answers)


def test_semantic_questions_are_normalised_deduplicated_union():
    sources = (
        *T.GLAMM_SEG_QUESTIONS, *T.LISA_SHORT_QUESTIONS, *T.LISA_LONG_QUESTIONS, *T.PPCR_EXTRA_QUESTIONS
    )
    expected = {s.replace("{class_name}", "{expression}").replace("{sent}", "{expression}") for s in sources}
    assert set(T.SEMANTIC_QUESTIONS) == expected
    assert len(T.SEMANTIC_QUESTIONS) == len(expected)  # no duplicates
    # GLaMM 16 + LISA short adds 1 new ("Please segment the ...") + LISA long 2 + ours.
    assert len(T.SEMANTIC_QUESTIONS) == 16 + 1 + 2 + len(T.PPCR_EXTRA_QUESTIONS)
    for question in T.SEMANTIC_QUESTIONS:
        assert question.count("{expression}") == 1
        assert "{class_name}" not in question and "{sent}" not in question
        assert T.SEG_TOKEN not in question and T.SEM_TOKEN not in question


def test_spatial_templates_have_the_right_placeholders():
    assert set(T.SPATIAL_QUESTIONS) == {"semantic", "expression", "expression+semantic"}
    for question in T.SPATIAL_QUESTIONS["semantic"]:
        assert question.count("<sem>") == 1 and "{expression}" not in question
    for question in T.SPATIAL_QUESTIONS["expression"]:
        assert question.count("{expression}") == 1 and "<sem>" not in question
    for question in T.SPATIAL_QUESTIONS["expression+semantic"]:
        assert question.count("{expression}") == 1 and question.count("<sem>") == 1
    assert (
        "Where is the target described by {expression}? Please respond with a bounding box."
        in T.SPATIAL_QUESTIONS["expression"]
    )
    assert (
        "Take the region marked by <sem> for {expression}, and provide its bounding box."
        in T.SPATIAL_QUESTIONS["expression+semantic"]
    )
    assert all(answer.count("[BOX]") == 1 for answer in T.SPATIAL_ANSWERS)
    assert all("[SEG]" not in q for qs in T.SPATIAL_QUESTIONS.values() for q in qs)


def test_semantic_turn_eval_is_fixed_and_normalises_expression():
    question, answer = T.semantic_turn("  The Man on the LEFT ")
    assert question == "Can you segment the the man on the left in this image?"
    assert answer == "It is [SEG]."
    assert T.semantic_turn("  The Man on the LEFT ") == (question, answer)


def test_spatial_turn_eval_uses_paper_templates():
    assert T.spatial_turn("expression", "Red Car") == (
        "Where is the target described by red car? Please respond with a bounding box.",
        "It is [BOX].",
    )
    assert T.spatial_turn("expression+semantic", "Red Car")[0] == (
        "Take the region marked by <sem> for red car, and provide its bounding box."
    )
    question, answer = T.spatial_turn("semantic", "Red Car")
    assert "red car" not in question and question.count("<sem>") == 1
    assert answer == "It is [BOX]."


def test_training_samples_cover_the_lists_and_are_seeded():
    rng = random.Random(0)
    seen_q, seen_a = set(), set()
    for _ in range(2000):
        question, answer = T.semantic_turn("dog", rng)
        seen_q.add(question)
        seen_a.add(answer)
    assert seen_q == {q.replace("{expression}", "dog") for q in T.SEMANTIC_QUESTIONS}
    assert seen_a == set(T.SEMANTIC_ANSWERS)
    spatial = {T.spatial_turn("semantic", "dog", rng) for _ in range(500)}
    assert {q for q, _ in spatial} == set(T.SPATIAL_QUESTIONS["semantic"])
    assert {a for _, a in spatial} == set(T.SPATIAL_ANSWERS)
    first = [T.semantic_turn("dog", random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_expression_with_braces_and_reserved_tokens_is_safe():
    question, _ = T.semantic_turn("the {weird} one [SEG] <sem>")
    assert question == "Can you segment the the {weird} one in this image?"
    question, _ = T.spatial_turn("expression+semantic", "cat <SEM> left")
    assert question.count("<sem>") == 1 and "cat left" in question


def test_bad_inputs_raise_ppcr_errors():
    with pytest.raises(PPCRError, match="no spatial stage"):
        T.spatial_turn("none", "dog")
    with pytest.raises(PPCRError, match="unknown spatial_prompt"):
        T.spatial_turn("semantics", "dog")
    with pytest.raises(DataError, match="empty referring expression"):
        T.semantic_turn("   ")


def test_llava_prompt_format_and_answer_boundary():
    prompt = T.llava_prompt("Can you segment the dog in this image?")
    assert prompt == "USER: <image>\nCan you segment the dog in this image? ASSISTANT:"
    full = T.llava_prompt("Can you segment the dog in this image?", "It is [SEG].")
    assert full == "USER: <image>\nCan you segment the dog in this image? ASSISTANT: It is [SEG]."
    assert full == prompt + " " + "It is [SEG]."
    assert full.count(T.IMAGE_TOKEN) == 1
