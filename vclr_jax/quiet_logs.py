"""Keeps the logs of the entry points readable: Orbax logs every checkpoint step at INFO."""

from absl import logging


class _WarningsOnlyFromOrbax(logging.logging.Filter):

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax's INFO lines (warnings and errors still show)."""
  logging.get_absl_logger().addFilter(_WarningsOnlyFromOrbax())
