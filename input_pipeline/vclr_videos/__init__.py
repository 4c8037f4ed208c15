"""The TFDS dataset ``vclr_videos``: vclr_videos_dataset_builder.py (README, TFDS)."""
