from vidiff.training.callbacks.video_logger import VideoLogger
