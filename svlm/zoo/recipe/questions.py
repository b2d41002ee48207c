"""svlm-shapes questions for training: derived from a scene annotation, typed, with their key words and
evidence objects."""

from __future__ import annotations

import random
from typing import Any

from transformers.processing_utils import ProcessorMixin

from svlm.data import shapes
from svlm.data.prompts import SHORT_ANSWER, build_conversation, with_instruction
from svlm.zoo.recipe import scenes_task
from svlm.zoo.recipe.question_mix import pick_by_type, weighted_types


def _templates() -> dict[str, Any]:
    return {
        "color": lambda o: f"What color is the {o['shape']}?",
        "shape": lambda o: f"What shape is at the {shapes.POSITION_PHRASES[o['position']]} of the image?",
        "count": lambda color: f"How many {color} shapes are there?",
        "exist": lambda shape, color: f"Is there a {color} {shape}?",
        "position": lambda o: f"Where is the {o['color']} {o['shape']}?",
    }


def derived_questions(
    sample: dict,
    k: int,
    rng: random.Random,
    type_weights: dict[str, int] | None = None,
    only: set[str] | None = None,
) -> list[tuple[str, str]]:
    """``k`` (question, answer) pairs about ``sample``'s image: its own question, then questions derived from
    its scene annotation with the benchmark's templates, cycling over question types, each type
    ``type_weights[type]`` times per cycle (default once; each type's answer drawn uniformly among the answers
    that type can have for this image). ``only`` keeps the question types in it (the image's own question
    too; it is the fallback when the image has no other question of those types). svlm-scenes samples get
    their questions from `svlm.zoo.recipe.scenes_task`."""
    if scenes_task.is_scenes(sample):
        return scenes_task.derived_questions(sample, k, rng, type_weights, only)
    t = _templates()
    objs = sample["objects"]
    shape_counts: dict[str, int] = {}
    combos = {(o["shape"], o["color"]) for o in objs}
    for o in objs:
        shape_counts[o["shape"]] = shape_counts.get(o["shape"], 0) + 1
    combo_counts: dict[tuple[str, str], int] = {}
    for o in objs:
        combo_counts[(o["shape"], o["color"])] = combo_counts.get((o["shape"], o["color"]), 0) + 1

    by_type: dict[str, dict[str, list[str]]] = {q: {} for q in shapes.QUESTION_TYPES}

    def add(qtype: str, question: str, answer: str) -> None:
        by_type[qtype].setdefault(answer, []).append(question)

    for o in objs:
        if shape_counts[o["shape"]] == 1:
            add("color", t["color"](o), o["color"])
        add("shape", t["shape"](o), o["shape"])
        if combo_counts[(o["shape"], o["color"])] == 1:
            add("position", t["position"](o), o["position"])
        add("exist", t["exist"](o["shape"], o["color"]), "yes")
    for color in shapes.COLORS:
        n = sum(o["color"] == color for o in objs)
        if n <= 3:
            add("count", t["count"](color), str(n))
    present_shapes = {s for s, _ in combos}
    present_colors = {c for _, c in combos}
    for s in shapes.SHAPES:
        for c in shapes.COLORS:
            if (s, c) not in combos and (s in present_shapes or c in present_colors):  # near misses
                add("exist", t["exist"](s, c), "no")

    own = (sample["question"], sample["answer"])
    out = [own] if only is None or question_type(own[0]) in only else []
    types = weighted_types(shapes.QUESTION_TYPES, type_weights, only)
    for qtype in by_type:
        for questions in by_type[qtype].values():
            questions.sort()
    picked = pick_by_type(by_type, types, k - len(out), rng, {sample["question"]}, str, max_tries=20 * k)
    out += [(q, answer) for answer, q in picked]
    return out or [own]


_TYPE_PREFIXES = {
    "What color": "color",
    "What shape": "shape",
    "How many": "count",
    "Is there": "exist",
    "Where is": "position",
}


def question_type(question: str, benchmark: str = "shapes") -> str:
    """The question type of a templated question of `benchmark` ("shapes" or "scenes")."""
    if benchmark == "scenes":
        return scenes_task.question_type(question)
    return next((t for prefix, t in _TYPE_PREFIXES.items() if question.startswith(prefix)), "other")


def prompt_text(processor: ProcessorMixin, question: str) -> str:
    """The evaluation prompt of svlm-shapes (question + short-answer instruction, chat template)."""
    conversation = build_conversation(with_instruction(question, SHORT_ANSWER))
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def keyword_end(question: str, benchmark: str = "shapes") -> int:
    """Where the words that name the evidence end in a templated question: "What color is the circle?" ->
    after "circle", "How many red shapes are there?" -> after "red", "What shape is at the top left of the
    image?" -> after "left" (svlm-scenes: after the first object's phrase)."""
    if benchmark == "scenes":
        return scenes_task.keyword_end(question)
    if question.startswith("What shape is at the "):
        return question.index(" of the image?")
    if question.startswith("How many "):
        return question.index(" shapes are there?")
    return len(question.rstrip("?"))


def phrase_start(question: str, benchmark: str = "shapes") -> int:
    """Where the words that name the evidence begin (their end is `keyword_end`): "What color is the small
    star?" -> at "small" (svlm-shapes: the key word alone)."""
    if benchmark == "scenes":
        return scenes_task.phrase_start(question)
    end = keyword_end(question, benchmark)
    return question.rfind(" ", 0, end) + 1


def evidence_objects(sample: dict, question: str) -> list[int]:
    """Indices of the objects a templated svlm-shapes question is about (empty when none is: a count of 0, a
    "no" to "Is there ...")."""
    if scenes_task.is_scenes(sample):
        return scenes_task.evidence_objects(sample, question)
    objs = sample["objects"]
    words = question.rstrip("?").split()
    if question.startswith("What color is the "):
        return [i for i, o in enumerate(objs) if o["shape"] == words[-1]]
    if question.startswith("What shape is at the "):
        phrase = question[len("What shape is at the ") : -len(" of the image?")]
        return [i for i, o in enumerate(objs) if shapes.POSITION_PHRASES[o["position"]] == phrase]
    if question.startswith("How many "):
        return [i for i, o in enumerate(objs) if o["color"] == words[2]]
    if question.startswith(("Is there a ", "Where is the ")):
        return [i for i, o in enumerate(objs) if (o["color"], o["shape"]) == (words[-2], words[-1])]
    return []
