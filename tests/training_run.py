"""Runs train.train_and_evaluate on a pickled config in a process of its own.

  python tests/training_run.py CONFIG_PICKLE WORKDIR

For the suite's learning runs (over a hundred steps): their caller starts this process with
conftest.LONG_RUN_XLA_FLAGS, not the suite's flags for quick compiles.
"""

import pickle
import sys

from vclr_jax import train


def main():
  config_path, workdir = sys.argv[1:]
  with open(config_path, 'rb') as f:
    config = pickle.load(f)
  train.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  main()
