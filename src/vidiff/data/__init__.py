"""Reading VIDiff shards for training and evaluation (``data_prep`` writes them).

The Lightning datamodule is imported on first use: the shard writers and readers that need only the sample
format (``vidiff-prep``, evaluation) then start without importing Lightning.
"""

from vidiff.data.mixing import TaskSchedule, TaskScheduledMix
from vidiff.data.shards import ClipOptions, decode_sample, resolve_urls, to_model_range
from vidiff.data.tasks import TASKS, TEMPLATES, instruction_for


def __getattr__(name: str):
    if name == "MultiTaskDataModule":
        from vidiff.data.datamodule import MultiTaskDataModule

        return MultiTaskDataModule
    raise AttributeError(f"module 'vidiff.data' has no attribute {name!r}")


__all__ = [
    "TASKS",
    "TEMPLATES",
    "ClipOptions",
    "MultiTaskDataModule",
    "TaskSchedule",
    "TaskScheduledMix",
    "decode_sample",
    "instruction_for",
    "resolve_urls",
    "to_model_range",
]
