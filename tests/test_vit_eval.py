"""A ViT run through the evaluations (linear, retrieval, TSN fine-tuning, snippet features) and
the pictures (the class token's attention maps, written and summing to 1 over the patches)."""

import json
import os

import jax
import numpy as np

from eval_fixtures import make_encoder_run
from test_eval_end_to_end import _eval_config, _finetune_config, _params, records_dir  # noqa: F401
from test_snippets import _config as _snippet_config
from test_vit import TINY, tiny_vit_config
from vclr_jax import augment
from vclr_jax import visualize
from vclr_jax.evaluation import finetune
from vclr_jax.evaluation import protocols
from vclr_jax.evaluation import snippets

quiet = lambda line: None


def test_a_vit_run_is_evaluated_fine_tuned_and_drawn(records_dir, tmp_path):  # noqa: F811
  run = make_encoder_run(tmp_path / 'vit_run', tiny_vit_config(), step=2)
  config = _eval_config(records_dir)
  config.data.crop_size, config.data.resize_short_side = 80, 88
  assert set(protocols.run_linear(config, run, log=quiet)) >= {'top1'}
  cached = np.load(tmp_path / 'vit_run' / 'eval' / 'features_test_step2.npz')
  assert cached['features'].shape[1] == TINY['vit_width']  # the class token's width
  assert set(protocols.run_retrieval(config, run, log=quiet)) == {'R@1', 'R@5', 'R@10'}

  snippet_root = snippets.run_snippet_features(_snippet_config(records_dir, 0), run, log=quiet)
  assert any(name.endswith('.csv') for name in os.listdir(os.path.join(snippet_root, 'test')))

  finetune_config = _finetune_config(records_dir, 'vit', 1)
  finetune_config.init = 'pretrained'
  metrics = finetune.run_finetune(finetune_config, run, log=quiet)
  assert 0 <= metrics['top1'] <= metrics['top5'] <= 1
  finetuned, _ = _params(finetune.finetune_dir(run, 'vit'), None)
  assert finetuned['backbone']['pos_embed'].shape == (1, 197, TINY['vit_width'])

  out = str(tmp_path / 'attention')
  video = os.path.join(records_dir, 'test')
  grid = visualize.visualize([run, finetune.finetune_dir(run, 'vit')], video, out,
                             num_frames=3, image_size=80, log=quiet)
  assert os.path.isfile(grid)
  source = visualize.load_source(run)
  with np.load(os.path.join(out, f'{source.name}_attention.npz')) as saved:
    maps, on_patches = saved['maps'], saved['on_patches']
  frames = visualize.read_frames(video, 0, 3, 80)
  rows, cols = frames.shape[1] // 16, frames.shape[2] // 16
  assert maps.shape == (3, TINY['vit_heads'], rows, cols)
  np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1, rtol=1e-5)
  assert np.all((on_patches > 0) & (on_patches < 1))
  # The saved maps from NumPy: softmax(q k^T / sqrt(d)) of the last block's qkv projection
  # (captured by Flax), the class token's row over the patch columns, renormalised.
  last_block = f'blocks_{TINY["vit_depth"] - 1}'
  _, state = jax.jit(lambda x: source.model.apply(
      source.variables, augment.normalize_uint8(x), train=False, mutable=['intermediates'],
      capture_intermediates=lambda m, _: m.name == 'qkv'))(frames)
  qkv = np.asarray(state['intermediates'][last_block]['attn']['qkv']['__call__'][0], np.float64)
  heads, head_dim = TINY['vit_heads'], TINY['vit_width'] // TINY['vit_heads']
  qkv = qkv.reshape(qkv.shape[:2] + (3, heads, head_dim))
  logits = np.einsum('nhd,nkhd->nhk', qkv[:, 0, 0], qkv[:, :, 1]) / np.sqrt(head_dim)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights = weights[..., 1:] / weights[..., 1:].sum(-1, keepdims=True)
  np.testing.assert_allclose(maps.reshape(weights.shape), weights, rtol=1e-4, atol=1e-6)
  written = set(os.listdir(out))
  for tag in [f'head{h}' for h in range(heads)] + ['mean']:
    assert {f'{source.name}-{tag}_attention_{k}.png' for k in range(3)} <= written
  assert 'finetune-vit_attention.npz' in written  # the fine-tuned ViT's row too
