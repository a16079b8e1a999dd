from vidiff.training.callbacks.preemption import PreemptionCheckpoint
from vidiff.training.callbacks.video_logger import VideoLogger
