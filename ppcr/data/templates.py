"""Prompt templates of the two reasoning stages and the LLaVA-1.5 conversation around them.

Semantic stage: the question/answer lists of GLaMM and LISA (kept verbatim below
so a test can compare them with the references), normalised to one ``{expression}`` placeholder,
deduplicated, and extended with a few of our own — the paper's "collected from LISA and GLaMM
and further extended". Spatial stage: PPCR's own small sets, one per
``spatial_prompt`` variant; ``<sem>`` marks the slot whose input embedding the model replaces by
the semantic prompt (docs/design.md, "Templates and prompts").

Training samples one question and one answer per call (``rng`` given); evaluation (``rng=None``)
always uses the fixed ``EVAL_*`` templates so scores are deterministic.
"""

from __future__ import annotations

import random

from ppcr.errors import DataError, RecipeError

SEG_TOKEN = "[SEG]"
BOX_TOKEN = "[BOX]"
SEM_TOKEN = "<sem>"
IMAGE_TOKEN = "<image>"
EXPRESSION = "{expression}"

# GLaMM `dataset/utils/utils.py` SEG_QUESTIONS, verbatim (mbzuai-oryx/groundingLMM).
GLAMM_SEG_QUESTIONS: tuple[str, ...] = (
    "Can you segment the {class_name} in this image?",
    "Please segment {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
    "Can you segment the {class_name} in this image",
    "Please segment {class_name} in this image",
    "What is {class_name} in this image? Please respond with segmentation mask",
    "What is {class_name} in this image? Please output segmentation mask",
    "Could you provide a segmentation mask for the {class_name} in this image?",
    "Please identify and segment the {class_name} in this image.",
    "Where is the {class_name} in this picture? Please respond with a segmentation mask.",
    "Can you highlight the {class_name} in this image with a segmentation mask?",
    "Could you provide a segmentation mask for the {class_name} in this image",
    "Please identify and segment the {class_name} in this image",
    "Where is the {class_name} in this picture? Please respond with a segmentation mask",
    "Can you highlight the {class_name} in this image with a segmentation mask",
)

# LISA `utils/utils.py` SHORT_QUESTION_LIST / LONG_QUESTION_LIST without the "<image>\n" prefix
# (dvlab-research/LISA); the LLaVA conversation puts the image token in front instead.
LISA_SHORT_QUESTIONS: tuple[str, ...] = (
    "Can you segment the {class_name} in this image?",
    "Please segment the {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
)
LISA_LONG_QUESTIONS: tuple[str, ...] = (
    "{sent} Please respond with segmentation mask.",
    "{sent} Please output segmentation mask.",
)

# GLaMM's and LISA's ANSWER_LIST (identical in both), verbatim.
SEMANTIC_ANSWERS: tuple[str, ...] = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)

# Our extensions: phrasings that name the expression as a description rather than a class.
PPCR_EXTRA_QUESTIONS: tuple[str, ...] = (
    "Please segment the object described by {expression} in this image.",
    "Which object in this image matches the description {expression}? "
    "Please respond with a segmentation mask.",
    "Find the {expression} in this image and output its segmentation mask.",
    "Can you produce a segmentation mask of the {expression} in this image?",
)


def _normalise_placeholder(template: str) -> str:
    return template.replace("{class_name}", EXPRESSION).replace("{sent}", EXPRESSION)


def _unique(templates) -> tuple[str, ...]:
    return tuple(dict.fromkeys(templates))


SEMANTIC_QUESTIONS: tuple[str, ...] = _unique(
    _normalise_placeholder(t)
    for t in (*GLAMM_SEG_QUESTIONS, *LISA_SHORT_QUESTIONS, *LISA_LONG_QUESTIONS, *PPCR_EXTRA_QUESTIONS)
)

# Spatial templates per `spatial_prompt` variant (docs/design.md, "Variants"). The first entry of each is the
# evaluation template; for the two expression variants it is the paper's own example (§4.4).
SPATIAL_QUESTIONS: dict[str, tuple[str, ...]] = {
    "semantic": (
        "Where is the target marked by <sem>? Please respond with a bounding box.",
        "Please provide the bounding box of the region marked by <sem>.",
        "Locate the object indicated by <sem> and output its bounding box.",
        "Given the segmentation prompt <sem>, where is the target? Please respond with a bounding box.",
    ),
    "expression": (
        "Where is the target described by {expression}? Please respond with a bounding box.",
        "Please provide the bounding box of the {expression} in this image.",
        "Can you locate the {expression} in this image? Please output a bounding box.",
        "Where is the {expression} in this picture? Please respond with a bounding box.",
    ),
    "expression+semantic": (
        "Take the region marked by <sem> for {expression}, and provide its bounding box.",
        "The region marked by <sem> shows the {expression}. Please respond with its bounding box.",
        "Where is the {expression} marked by <sem>? Please output a bounding box.",
    ),
}

SPATIAL_ANSWERS: tuple[str, ...] = (
    "It is [BOX].",
    "Sure, [BOX].",
    "Sure, it is [BOX].",
    "Sure, the bounding box is [BOX].",
    "[BOX].",
)

# Fixed evaluation templates: GLaMM's first question (also LISA's first short question) and the
# first answer of each list.
EVAL_SEMANTIC_QUESTION = SEMANTIC_QUESTIONS[0]
EVAL_SEMANTIC_ANSWER = SEMANTIC_ANSWERS[0]
EVAL_SPATIAL_QUESTIONS: dict[str, str] = {variant: qs[0] for variant, qs in SPATIAL_QUESTIONS.items()}
EVAL_SPATIAL_ANSWER = SPATIAL_ANSWERS[0]

RESERVED_TOKENS = (SEG_TOKEN, BOX_TOKEN, SEM_TOKEN, IMAGE_TOKEN)


def normalise_expression(expression: str) -> str:
    """``.strip().lower()`` as GLaMM/LISA do, with the model's own tokens removed.

    A referring expression that literally contained ``[SEG]`` or ``<sem>`` would add a second
    special token to the prompt and break the "exactly one [SEG] / <sem>" invariant the model
    relies on, so such substrings are deleted.
    """
    text = expression.strip().lower()
    for token in RESERVED_TOKENS:
        text = text.replace(token.lower(), " ")
    text = " ".join(text.split())
    if not text:
        raise DataError(f"empty referring expression: {expression!r}")
    return text


def _fill(template: str, expression: str) -> str:
    # str.replace, not str.format: an expression may contain braces.
    return template.replace(EXPRESSION, expression)


def semantic_turn(expression: str, rng: random.Random | None = None) -> tuple[str, str]:
    """(question, answer) of the semantic stage; the answer contains ``[SEG]`` once."""
    text = normalise_expression(expression)
    if rng is None:
        return _fill(EVAL_SEMANTIC_QUESTION, text), EVAL_SEMANTIC_ANSWER
    return _fill(rng.choice(SEMANTIC_QUESTIONS), text), rng.choice(SEMANTIC_ANSWERS)


def spatial_turn(variant: str, expression: str, rng: random.Random | None = None) -> tuple[str, str]:
    """(question, answer) of the spatial stage for a ``spatial_prompt`` variant.

    The answer contains ``[BOX]`` once; the question contains ``<sem>`` once for the ``semantic``
    and ``expression+semantic`` variants. ``none`` has no spatial stage and is refused.
    """
    if variant not in SPATIAL_QUESTIONS:
        known = ", ".join(SPATIAL_QUESTIONS)
        if variant == "none":
            raise RecipeError(
                "spatial_prompt 'none' has no spatial stage, so there is no spatial prompt",
                hint=f"use one of: {known}",
            )
        raise RecipeError(f"unknown spatial_prompt variant {variant!r}", hint=f"use one of: {known}")
    text = normalise_expression(expression)
    if rng is None:
        return _fill(EVAL_SPATIAL_QUESTIONS[variant], text), EVAL_SPATIAL_ANSWER
    return _fill(rng.choice(SPATIAL_QUESTIONS[variant]), text), rng.choice(SPATIAL_ANSWERS)


LLAVA_ASSISTANT = " ASSISTANT:"

# The image wrappers GLaMM's LLM was trained with (its ``mm_use_im_start_end``).
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"

# llava-hf's conversation puts the bare image placeholder on its own line before the question.
LLAVA_HF_IMAGE_TEXT = f"{IMAGE_TOKEN}\n"
# LLaVA's ``conv_llava_v1`` system prompt, which GLaMM's fine-tuning, evaluation and demo use
# (groundingLMM ``model/llava/conversation.py``; ``--conv_type llava_v1`` is GLaMM's default).
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# GLaMM's ``begin_str``, put before the first question of every conversation
# (groundingLMM ``dataset/segm_datasets/RefCOCO_Segm_ds.py``, ``app.py``).
GLAMM_IMAGE_TEXT = f"The {IMAGE_TOKEN} provides an overview of the picture.\n"
# conv_llava_v1's separator after the system prompt and between a turn's question and answer.
LLAVA_V1_SEP = " "


def conversation(
    question: str,
    answer: str | None = None,
    *,
    system: str = "",
    image_text: str = LLAVA_HF_IMAGE_TEXT,
    image_start_end: bool = False,
    image_first: bool = True,
) -> str:
    """One LLaVA-1.5 (``conv_llava_v1``) turn: ``"[{system} ]USER: {image_text}{question} ASSISTANT:[ {answer}]"``.

    ``image_text`` carries the ``<image>`` placeholder, wrapped as ``<im_start><image><im_end>``
    with ``image_start_end``. The defaults give llava-hf's prompt (no system prompt, a bare
    ``<image>`` line); GLaMM's is ``system=LLAVA_V1_SYSTEM, image_text=GLAMM_IMAGE_TEXT,
    image_start_end=True``. ``image_first=False`` puts the question first and the image text after
    it on the next line (``"USER: {question}\\n<image> ASSISTANT:"``; ``model.prompt_order:
    question_first``), an order LLaVA's instruction data also uses. The turn's closing separator
    (``</s>``) is not written: the caller appends the tokenizer's EOS id, which is what ``</s>``
    tokenises to.
    """
    image = f"{IMAGE_START_TOKEN}{IMAGE_TOKEN}{IMAGE_END_TOKEN}" if image_start_end else IMAGE_TOKEN
    user = image_text.replace(IMAGE_TOKEN, image, 1)
    user = f"{user}{question}" if image_first else f"{question}\n{user.rstrip(chr(10))}"
    head = f"{system}{LLAVA_V1_SEP}" if system else ""
    prompt = f"{head}USER: {user}{LLAVA_ASSISTANT}"
    return prompt if answer is None else f"{prompt}{LLAVA_V1_SEP}{answer}"


def llava_prompt(question: str, answer: str | None = None, *, image_first: bool = True) -> str:
    """One LLaVA-1.5 turn as llava-hf expects it: ``"USER: <image>\\n{question} ASSISTANT: {answer}"``.

    ``image_first=False`` puts the question before the image (``"USER: {question}\\n<image> ..."``,
    ``model.prompt_order: question_first``), an order LLaVA's instruction data also uses.

    With ``answer=None`` the text ends with ``"ASSISTANT:"`` (the generation prompt). The answer
    starts right after ``llava_prompt(question)`` plus one space —
    ``llava_prompt(q, a) == llava_prompt(q) + " " + a`` — so the caller masks the labels of the
    tokens of ``llava_prompt(q)`` (with a Llama tokenizer the space joins the answer's first
    token). No system prompt and no ``</s>``: the caller appends the tokenizer's EOS id if the
    answer should be terminated.
    """
    return conversation(question, answer, image_first=image_first)
