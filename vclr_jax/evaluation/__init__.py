"""Evaluation of pretrained encoders: features, linear probe, retrieval, TSN fine-tuning.

No module here imports TensorFlow at import time; the record readers of input_pipeline/ are
imported inside the functions that read records.
"""
