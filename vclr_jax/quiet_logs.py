"""Keeps the logs of the entry points readable: Orbax logs every checkpoint step at INFO."""

from absl import logging


class _WarningsOnlyFromOrbax(logging.logging.Filter):

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax's INFO lines and JAX's list of platforms it did not find (warnings and errors
  still show)."""
  logging.get_absl_logger().addFilter(_WarningsOnlyFromOrbax())
  logging.logging.getLogger('jax._src.xla_bridge').setLevel(logging.logging.WARNING)
