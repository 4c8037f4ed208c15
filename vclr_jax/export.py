"""Exports a run's online encoder for PyTorch: torchvision, timm, mmaction2 or safetensors weights.

  python -m vclr_jax.export --workdir=RUN [--step=N] --format=torchvision --out=r50.pth
  python -m vclr_jax.export --workdir=VIT_RUN --format=timm --out=vit_s16.pth

With torch and torchvision (and timm, for a ViT) installed, the export verifies itself:
torchvision's network (ResNet, or r3d_18 / s3d for a 3D backbone) or timm's VisionTransformer
loads the written file (strict) and must give the same pooled features as our model on random
frames or clips.
See docs/interop.md.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from absl import flags

from vclr_jax.interop.exporting import FORMATS, export_encoder, export_metadata
from vclr_jax.models import vit
from vclr_jax.models.vclr import vit_spec


def export_and_verify(variables: Mapping, out: str, fmt: str, metadata: Mapping, *,
                      verify: bool = True, image_size: int = 224, num_frames: int = 16):
  """Writes the export and, where torch is installed, verifies it; returns the Verification
  (None when not verified). Raises RuntimeError when the features disagree. A 3D backbone is
  verified on clips of ``num_frames`` frames."""
  for path in export_encoder(variables, out, fmt, metadata):
    print(f'Wrote {path}')
  if not verify:
    return None
  is_vit = metadata['architecture'] in vit.ARCHITECTURES
  needed = ('torch', 'torchvision') + (('timm',) if is_vit else ())
  if not all(importlib.util.find_spec(m) for m in needed):
    print(f'{"/".join(needed)} not installed: export written but not verified.')
    return None
  from vclr_jax.interop import verification
  reference = 'timm' if is_vit else 'torchvision'
  if is_vit:
    kwargs = metadata['timm_kwargs']
    result = verification.verify_timm_export(
        out, fmt, variables, architecture=metadata['architecture'],
        vit_size=vit.ViTSpec(kwargs['embed_dim'], kwargs['depth'], kwargs['num_heads'],
                             kwargs['global_pool']), image_size=image_size)
  elif metadata['depth'] is None:  # a 3D backbone (see export_metadata)
    result = verification.verify_video_export(
        out, fmt, variables, architecture=metadata['architecture'],
        width_multiplier=metadata['width_multiplier'], image_size=image_size,
        num_frames=num_frames)
  else:
    result = verification.verify_export(out, fmt, variables, depth=metadata['depth'],
                                        width_multiplier=metadata['width_multiplier'],
                                        image_size=image_size)
  print(f'Verified with {reference} {metadata["architecture"]} on random {result.inputs}: '
        f'max abs feature difference {result.max_abs_difference:.3g} '
        f'(tolerance {result.tolerance:.3g}, features up to {result.max_abs_feature:.3g}).')
  if not result.passed:
    raise RuntimeError(f'{out}: {reference} features differ from ours by '
                       f'{result.max_abs_difference:.3g} > {result.tolerance:.3g}; the export is '
                       'wrong, do not use it (please report this with the command you ran).')
  return result


def export_run(workdir: str, step: int | None, fmt: str, out: str, *, verify: bool = True,
               image_size: int = 224):
  """Exports checkpoint ``step`` (latest if None) of the run in ``workdir``; a 3D run's export
  is verified on clips of the run's config.data.clip_length frames."""
  from vclr_jax import checkpointing
  variables, step = checkpointing.load_encoder_variables(workdir, step)
  config = checkpointing.load_run_config(workdir)
  # Run configs written before 3D backbones existed have no architecture: ResNets.
  architecture = config.model.get('architecture', 'resnet')
  backbone = ({'depth': config.model.depth} if architecture == 'resnet' else
              {'architecture': architecture, 'vit_size': vit_spec(config.model)})
  metadata = export_metadata(**backbone, width_multiplier=config.model.width_multiplier,
                             step=step, source=str(checkpointing.absolute(workdir)))
  clip_length = config.data.get('clip_length', 1)
  return export_and_verify(variables, out, fmt, metadata, verify=verify, image_size=image_size,
                           num_frames=clip_length)


def _define_flags():
  # Defined only when run as a program, so importing this module adds no global flags that
  # could clash with the trainer's.
  flags.DEFINE_string('workdir', None, 'Run directory to export from.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step; the latest if unset.')
  flags.DEFINE_enum('format', 'torchvision', FORMATS, 'Layout of the written weights.')
  flags.DEFINE_string('out', None, 'File to write.', required=True)
  flags.DEFINE_bool('verify', True, 'Check the file against torchvision (timm for a ViT) when '
                    'they are installed.')
  flags.DEFINE_integer('verify_image_size', 224, 'Frame size of the verification forward pass.')


def main(argv):
  del argv
  f = flags.FLAGS
  export_run(f.workdir, f.step, f.format, f.out, verify=f.verify,
             image_size=f.verify_image_size)


if __name__ == '__main__':
  from vclr_jax import cli_errors
  _define_flags()
  cli_errors.run(main)
