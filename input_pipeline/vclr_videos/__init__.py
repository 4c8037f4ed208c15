"""The TFDS dataset ``vclr_videos``: vclr_videos_dataset_builder.py (docs/data.md, TFDS)."""
