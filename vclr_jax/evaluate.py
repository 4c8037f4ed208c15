"""Evaluate a pretraining run: python -m vclr_jax.evaluate --config=configs/eval_ucf101.py
--workdir=runs/k400 --eval=retrieval.

--eval names the protocol:
  features   extract (or reuse) the cached features of the train and test splits
  linear     linear probe on frozen features (configs/eval_*.py)
  retrieval  R@k of test queries against the train gallery, and the retrieval picture
  finetune   TSN fine-tuning of the backbone, then testing (configs/finetune_*.py)
  snippet_features  per-video feature sequences for localization (configs/snippet_features.py)
Results go to RUN/eval/results.json and RUN/eval/results.md; cached features to
RUN/eval/features_<split>_step<N>.npz; fine-tuning runs to RUN/finetune/<name>/.
Any config value can be overridden (--config.data.records_dir=/data/ucf101_records).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vclr_jax import cli_errors
from vclr_jax import config_checks
from vclr_jax import quiet_logs
from vclr_jax.evaluation import finetune
from vclr_jax.evaluation import protocols
from vclr_jax.evaluation import snippets

# A config section each protocol needs: eval_*.py configs have the first three, finetune_*.py
# the last, so a mixed-up --config gets a clear error instead of a missing-attribute one.
REQUIRED_SECTION = {'features': 'features', 'linear': 'linear', 'retrieval': 'retrieval',
                    'finetune': 'optim', 'snippet_features': 'snippets'}
PROTOCOLS = {
    'features': protocols.run_features,
    'linear': protocols.run_linear,
    'retrieval': protocols.run_retrieval,
    'finetune': finetune.run_finetune,
    'snippet_features': snippets.run_snippet_features,
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Evaluation config (configs/eval_*.py for '
                                'features/linear/retrieval, configs/finetune_*.py for finetune).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The pretraining run directory (holds config.json and '
                    'checkpoints/); results are written under it.')
flags.DEFINE_enum('eval', None, list(PROTOCOLS), 'Which evaluation to run.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host pods).')
flags.mark_flags_as_required(['config', 'workdir', 'eval'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_logs.quiet_library_logs()
  section = REQUIRED_SECTION[FLAGS.eval]
  if section not in FLAGS.config:
    kind = {'finetune': 'configs/finetune_*.py',
            'snippet_features': 'configs/snippet_features.py'}.get(FLAGS.eval, 'configs/eval_*.py')
    raise app.UsageError(f'--eval={FLAGS.eval} needs a config with config.{section}, as in '
                         f'{kind}; the --config given has none.')
  if FLAGS.distributed:
    jax.distributed.initialize()
  # Before the first log line and before anything is written under the run.
  config_checks.validate_eval_config(FLAGS.config, FLAGS.eval, FLAGS.workdir, jax.device_count(),
                                     jax.process_count())
  logging.info('JAX %s on %d %s devices, process %d of %d.', jax.__version__, jax.device_count(),
               jax.default_backend(), jax.process_index(), jax.process_count())
  log = logging.info if jax.process_index() else print
  PROTOCOLS[FLAGS.eval](FLAGS.config, FLAGS.workdir, log=log)


if __name__ == '__main__':
  cli_errors.run(main)
