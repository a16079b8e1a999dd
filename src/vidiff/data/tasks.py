"""The VIDiff tasks and their instruction templates.

Shared by the shard converters (``data_prep``), which store one canonical instruction per sample, and by the
datamodule, which re-draws a paraphrase at training time so the model does not latch on to one wording.
The paraphrases are our own; the ``rvos`` set follows the shape of InstructDiffusion's segmentation prompts
(object and colour slots).
"""

from __future__ import annotations

import random
import re

from vidiff.overlay import PALETTE as OVERLAY_PALETTE
from vidiff.overlay import color_in_instruction


TASKS = ("t2v", "recolor", "inpaint", "dehaze", "deblur", "rvos", "edit")
RESTORATION_TASKS = ("recolor", "inpaint", "dehaze", "deblur")
# the tasks whose sources can be synthesised from any clean clip (vidiff-prep video-folder, the demo)
SYNTHETIC_TASKS = (*RESTORATION_TASKS, "edit", "rvos")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "Recolor the gray video.",
        "Convert the grayscale clip into a colorful masterpiece.",
        "Introduce a range of colors to the gray video.",
        "Add natural colors to this black-and-white video.",
        "Colorize the grayscale footage.",
    ),
    "inpaint": (
        "Apply inpainting algorithms to recover the missing video.",
        "Repair the video with missing parts.",
        "Fill in the white holes in this video.",
        "Restore the missing regions of the video.",
    ),
    "dehaze": (
        "Remove the applied haze from this video.",
        "Clear the fog from the video.",
        "Make this hazy video clear.",
        "Dehaze the video.",
    ),
    "deblur": (
        "Enhance the clarity of this blurry video.",
        "Improve the quality of this fuzzy video.",
        "Remove the motion blur from the video.",
        "Sharpen this blurry video.",
    ),
    "rvos": (
        "Mark the pixels of {object} in {color} and leave the rest unchanged.",
        "Paint {object} {color} and keep everything else the same.",
        "Cover {object} with a translucent {color} mask.",
        "Highlight {object} in {color}.",
        "Segment {object} and color it {color}.",
        "Put a {color} overlay on {object}, leaving the background as it is.",
        "Show where {object} is by tinting it {color}.",
        "Make {object} {color}, and do not change the other pixels.",
        "Label the region of {object} with {color}.",
        "Fill {object} with semi-transparent {color}.",
        "Use {color} to mark {object} in every frame.",
    ),
    "edit": ("Edit the video to reflect the style of the target image.",),
}

# haze strength words for HazeWorld's scattering coefficient beta (0.005 .. 0.03)
HAZE_LEVELS = ((0.0075, "light"), (0.015, "moderate"), (0.025, "thick"), (float("inf"), "heavy"))


def haze_word(beta: float) -> str:
    return next(word for limit, word in HAZE_LEVELS if beta < limit)


def instruction_for(task: str, rng: random.Random, **slots) -> str:
    """A paraphrase of the instruction for ``task`` (``rvos`` needs ``object=`` and ``color=``)."""
    if task not in TEMPLATES:
        raise ValueError(f"task {task!r} has no instruction templates (tasks: {', '.join(TEMPLATES)})")
    template = rng.choice(TEMPLATES[task])
    if task == "rvos":
        return template.format(object=slots["object"], color=slots["color"].lower())
    return template


def redraw_instruction(task: str, instruction: str, meta: dict, rng: random.Random) -> str:
    """Re-draw a paraphrase at training time, keeping what the target depends on.

    ``rvos`` keeps the overlay colour baked into the target and may switch to another referring expression of
    the same object; ``edit`` and ``t2v`` keep their sample-specific text; restoration tasks draw any paraphrase.
    """
    if task == "rvos" and meta.get("color") and meta.get("expressions"):
        return instruction_for(task, rng, object=rng.choice(meta["expressions"]), color=meta["color"])
    if task in RESTORATION_TASKS:
        return instruction_for(task, rng)
    return instruction


def is_segmentation_instruction(instruction: str | None) -> bool:
    """Whether an instruction asks for the ``rvos`` overlay: it has the shape of one of the rvos instruction
    templates ("Mark the pixels of the dog in red and leave the rest unchanged.") with a palette colour."""
    if not instruction or color_in_instruction(instruction) is None:
        return False
    colors = "|".join(OVERLAY_PALETTE)
    text = " ".join(instruction.lower().replace("grey", "gray").split())
    for template in TEMPLATES["rvos"]:
        pattern = re.escape(template.lower()).replace(r"\{object\}", ".+").replace(r"\{color\}", f"(?:{colors})")
        if re.fullmatch(pattern, text):
            return True
    return False


def task_of_instruction(instruction: str | None) -> str | None:
    """The task whose instruction template ``instruction`` is (case and spacing aside), or ``None``: how a model's
    per-task sampling settings are found for a free-text instruction."""
    if not instruction:
        return None
    if is_segmentation_instruction(instruction):
        return "rvos"
    text = " ".join(instruction.lower().split())
    for task, templates in TEMPLATES.items():
        if task != "rvos" and any(text == " ".join(t.lower().split()) for t in templates):
            return task
    return None
