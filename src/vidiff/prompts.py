"""Instruction text shared by training data and inference."""

from __future__ import annotations


LONG_VIDEO_PREFIXES = ("Based on the first {n} {frames},", "According to the first {n} {frames},")


def continuation_instruction(instruction: str | None, num_reference_frames: int, template: int = 0) -> str:
    """Prefix an instruction for a clip whose first ``n`` frames are already translated.

    ``continuation_instruction("Recolor the gray video.", 2)`` -> ``"Based on the first 2 frames, recolor the gray video."``
    """
    prefix = LONG_VIDEO_PREFIXES[template % len(LONG_VIDEO_PREFIXES)].format(
        n=num_reference_frames, frames="frame" if num_reference_frames == 1 else "frames"
    )
    if not instruction:
        return prefix.rstrip(",") + "."
    text = instruction.strip()
    # lower-case the first word unless it looks like an acronym or a name ("DAVIS", "I")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return f"{prefix} {text}"
