"""Everything that imports TensorFlow: record preparation, tf.data readers, the synthetic dataset."""

from vclr_jax import quiet_logs as _quiet_logs

# TensorFlow's import prints lines that say nothing to a user: filter them, before any module
# of this package imports it (VCLR_DEBUG=1 keeps them).
_quiet_logs.quiet_tensorflow_import()
