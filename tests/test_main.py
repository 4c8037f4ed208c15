"""End to end: python -m vclr_jax.main learns, stops cleanly on SIGTERM and resumes."""

import os
import re
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_LINE = re.compile(r'step (\d+)/(\d+) \| loss ([\d.]+)')

TINY_FLAGS = [
    '--config=configs/demo.py',
    '--config.data.source=in_memory', '--config.data.in_memory_videos=32',
    '--config.data.image_size=80', '--config.batch_size=16', '--config.queue_size=64',
    '--config.model.width_multiplier=0.125', '--config.num_epochs=30',
    '--config.optim.warmup_epochs=1', '--config.optim.base_lr=1.6',
    '--config.log_every_steps=5', '--config.checkpoint.every_steps=20',
    # Crops and flips only (the drifting textures' identity is their colour), set from the CLI.
    '--config.data.augment.jitter_probability=0', '--config.data.augment.grayscale_probability=0',
    '--config.data.augment.blur_probability=0',
]


def launch(workdir):
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable, '-m', 'vclr_jax.main', f'--workdir={workdir}', *TINY_FLAGS],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def test_main_learns_stops_on_sigterm_and_resumes(tmp_path):
  workdir = tmp_path / 'run'
  first = launch(workdir)
  losses, output = {}, []
  for line in first.stdout:
    output.append(line)
    match = LOG_LINE.search(line)
    if match:
      losses[int(match[1])] = float(match[3])
      if int(match[1]) == 30:
        first.send_signal(signal.SIGTERM)
  assert first.wait() == 0, ''.join(output[-30:])
  stopped_at = max(losses)
  assert 30 <= stopped_at < 60, ''.join(output[-30:])
  assert any('SIGTERM received' in line for line in output)
  saved = sorted(int(name) for name in os.listdir(workdir / 'checkpoints') if name.isdigit())
  assert saved[-1] >= stopped_at
  # Orbax's per-save INFO lines are filtered out of the log (vclr_jax/quiet_logs.py).
  assert not any(line.startswith('I') and 'checkpoint_manager.py' in line for line in output)

  second = launch(workdir)
  output2, _ = second.communicate()
  assert second.returncode == 0, output2[-3000:]
  assert 'Resumed from' in output2 and f'at step {saved[-1]}' in output2
  for match in LOG_LINE.finditer(output2):
    losses[int(match[1])] = float(match[3])
  assert max(losses) == 60
  assert (workdir / 'config.json').exists()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert (workdir / 'curves.png').exists()  # drawn once the run finished
  # The queues hold real keys from step 8 on; from then the loss must go down.
  assert losses[60] < losses[10] - 0.3, losses
