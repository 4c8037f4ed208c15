"""Pretrain VCLR: python -m vclr_jax.main --config=configs/k400.py --workdir=runs/k400.

Any config value can be overridden on the command line (--config.batch_size=512). A run
resumes by itself from the latest checkpoint in --workdir; on a multi-host pod pass
--distributed so that every host joins one JAX job (jax.distributed.initialize()).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vclr_jax import cli_errors
from vclr_jax import config_checks
from vclr_jax import quiet_logs
from vclr_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, config.json, TensorBoard logs.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host pods).')
# Cloud TPU, Slurm and other clusters are detected by jax.distributed.initialize() itself;
# elsewhere (several processes on one machine, a hand-made cluster) name the job here.
flags.DEFINE_string('coordinator_address', None, 'With --distributed: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'With --distributed: processes in the job.')
flags.DEFINE_integer('process_id', None, 'With --distributed: this process, 0 to N - 1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_logs.quiet_library_logs()
  if FLAGS.distributed:
    # Collectives between processes on CPU devices (GPU and TPU use their own).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  # Before the first log line, so that a bad config prints nothing but its short error.
  config_checks.validate_config(FLAGS.config, jax.device_count(), jax.process_count())
  logging.info('JAX %s on %d %s devices, process %d of %d.', jax.__version__, jax.device_count(),
               jax.default_backend(), jax.process_index(), jax.process_count())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli_errors.run(main)
