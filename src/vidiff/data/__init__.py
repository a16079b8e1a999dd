"""Reading VIDiff shards for training and evaluation (``data_prep`` writes them)."""

from vidiff.data.datamodule import MultiTaskDataModule
from vidiff.data.mixing import TaskSchedule, TaskScheduledMix
from vidiff.data.shards import ClipOptions, decode_sample, resolve_urls, to_model_range
from vidiff.data.tasks import TASKS, TEMPLATES, instruction_for
