"""mml: Mutual Modality Learning for video action recognition, as a tracked pipeline."""

__version__ = "0.1.0"
