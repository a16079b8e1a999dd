"""What makes a training stage the stage it is, as data: :class:`Stage`, read once from the ``stage`` config node.

The T2I, T2V, V2V and autoencoder stages run on one engine (:class:`~vidiff.training.engine.StageModule`); what
differs between them is these fields, which ``conf/stage/*.yaml`` spell out:

- ``trains``: the parameter groups that train (:data:`PARAMETER_GROUPS`), every other parameter is frozen;
- ``source``: whether a source clip conditions the model (the V2V stages); without one the U-Net's source
  channels stay zero and only text conditioning is dropped;
- ``frames_per_sample``: how many frames of each clip, from the first, a step trains on (1: an image stage;
  ``None``: all the data loads);
- ``export``: what the exported model directory carries (the EMA weights; the long-video reference frames the
  training data taught).

Conditioning dropout, the diffusion objective and the optimizer are the stage's config groups
(``conf/stage/{cond_dropout,objective,optimizer}``). A new stage (InsV2V's motion-only V2V,
``conf/stage/v2v_motion.yaml``) is a new set of values, not new code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vidiff.models.unet import is_temporal_parameter


def _network(prefix: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(prefix + ".")


# the parameter groups a stage can train, by the name of a VIDiffModel parameter
PARAMETER_GROUPS: dict[str, Callable[[str], bool]] = {
    "unet": _network("unet"),
    "unet.spatial": lambda name: name.startswith("unet.") and not is_temporal_parameter(name),
    "unet.motion": lambda name: name.startswith("unet.") and is_temporal_parameter(name),
    "image_projector": _network("image_projector"),
    "vae": _network("vae"),
    "text_encoder": _network("text_encoder"),
    "image_encoder": _network("image_encoder"),
}


@dataclasses.dataclass(frozen=True)
class Export:
    """What a stage's exported model directory carries.

    Args:
        ema: the EMA weights when the stage keeps an EMA (``False``: the last trained weights).
        reference_frames: the long-video reference frames the training data taught (``data.long_video_frames``
            when ``data.long_video_prob > 0``, none otherwise); ``False`` leaves the model's as they are.
    """

    ema: bool = True
    reference_frames: bool = False


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage as data (see the module's docstring for the fields)."""

    name: str
    trains: tuple[str, ...]
    source: bool
    frames_per_sample: int | None = None
    export: Export = Export()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.trains) - set(PARAMETER_GROUPS))
        if unknown or not self.trains:
            raise ValueError(
                f"stage {self.name!r}: trains must name parameter groups from {', '.join(PARAMETER_GROUPS)}, "
                f"got {list(self.trains)}"
            )
        if self.frames_per_sample is not None and self.frames_per_sample < 1:
            raise ValueError(f"stage {self.name!r}: frames_per_sample must be >= 1 or null (all frames)")

    def trains_parameter(self, name: str) -> bool:
        """Whether the ``VIDiffModel`` parameter ``name`` trains in this stage."""
        return any(PARAMETER_GROUPS[group](name) for group in self.trains)

    def plain_fields(self) -> tuple[list[str], bool, int | None, dict[str, bool]]:
        """``(trains, source, frames_per_sample, export)`` as plain values (a module's hyper-parameters: checkpoints
        load with ``torch.load(weights_only=True)``)."""
        return list(self.trains), self.source, self.frames_per_sample, dataclasses.asdict(self.export)

    @classmethod
    def of(cls, name: str, **fields: Any) -> Stage:
        """The stage called ``name`` with ``fields`` (``trains``, ``source``, ``frames_per_sample``, ``export``).
        A field left :data:`FROM_NAME` takes the value of the built-in stage of that name (:data:`STAGES`, the
        values ``conf/stage/<name>.yaml`` spells out); a stage of another name gives at least ``trains`` and
        ``source``."""
        unknown = sorted(set(fields) - {"trains", "source", "frames_per_sample", "export"})
        if unknown:
            raise TypeError(f"unknown stage fields {unknown}")
        given = {key: value for key, value in fields.items() if value is not FROM_NAME}
        named = STAGES.get(name)
        missing = [key for key in ("trains", "source") if key not in given]
        if named is None and missing:
            raise ValueError(
                f"unknown stage {name!r}: a stage that is not one of {', '.join(STAGES)} gives its "
                f"{' and '.join(missing)} (conf/stage/*.yaml)"
            )
        export = given.get("export", named.export if named else Export())
        if not isinstance(export, Export):
            base = named.export if named else Export()
            export = dataclasses.replace(base, **{key: bool(value) for key, value in dict(export or {}).items()})
        frames = given.get("frames_per_sample", named.frames_per_sample if named else None)
        return cls(
            name=str(name),
            trains=tuple(str(group) for group in given.get("trains", named.trains if named else ())),
            source=bool(given.get("source", named.source if named else False)),
            frames_per_sample=None if frames is None else int(frames),
            export=export,
        )


class _FromName:
    """The default of a stage field a module is not given: the value of the built-in stage it names."""

    def __repr__(self) -> str:
        return "<from the stage's name>"


FROM_NAME: Any = _FromName()

# the built-in stages, for modules built in Python by name; conf/stage/<name>.yaml spells out the same values
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("t2i", ("unet.spatial",), source=False, frames_per_sample=1),
        Stage("t2v", ("unet.motion",), source=False),
        Stage("v2v", ("unet", "image_projector"), source=True, export=Export(reference_frames=True)),
        Stage("vae", ("vae",), source=True),
    )
}
