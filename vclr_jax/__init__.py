"""vclr_jax: VCLR self-supervised video representation learning in JAX/Flax."""

# TensorFlow's import prints lines that say nothing to a user (oneDNN, absl's log init): every
# entry point filters them, wherever TensorFlow gets imported (VCLR_DEBUG=1 keeps them).
from vclr_jax import quiet_logs as _quiet_logs  # pylint: disable=g-import-not-at-top

_quiet_logs.quiet_tensorflow_import()
