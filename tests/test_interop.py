"""PyTorch interop: exports load into torchvision and compute our features; imports of
torchvision, MoCo, reference VCLR and mmaction2 files restore exactly what was saved."""

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from safetensors import safe_open

from conftest import tiny_config
from vclr_jax import checkpointing
from vclr_jax.export import export_and_verify, export_run
from vclr_jax.interop import load_pytorch_variables
from vclr_jax.interop.convert import convert
from vclr_jax.interop.exporting import export_metadata, metadata_path
from vclr_jax.interop.torch_layout import backbone_state_dict
from vclr_jax.interop.torchvision_compat import import_torchvision
from vclr_jax.interop.verification import torchvision_resnet, verify_export
from vclr_jax.models.vclr import VCLR

torchvision = import_torchvision()
STEP = 1234
# The export's own float32 check across two libraries: rounding through 50 layers gives ~1e-6
# (measured 1.8e-7 on O(1) features), while a wrong weight mapping moves features by O(1).
FLOAT32_EXPORT_ATOL = 1e-4


def random_variables(model: VCLR, seed: int) -> dict:
  """Random VCLR variables, BatchNorm statistics included, so that a mapping error shows.

  Filled with numpy from the shapes (a real init of ResNet-50 costs ~10 s on CPU); the BN
  scales are kept below 1 so the features of an untrained 50-layer net stay O(1) and an
  absolute tolerance of 1e-4 means something.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32, 3)),
                                             train=False))
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    if path[-1] == 'kernel' and len(shape) == 4:
      return rng.normal(0, np.sqrt(2 / (shape[0] * shape[1] * shape[3])), shape)
    return {'kernel': lambda: rng.uniform(-1, 1, shape) / np.sqrt(shape[0]),
            'scale': lambda: rng.uniform(0.2, 0.6, shape),
            'bias': lambda: rng.normal(0, 0.1, shape),
            'mean': lambda: rng.normal(0, 0.1, shape),
            'var': lambda: rng.uniform(0.5, 2.0, shape)}[path[-1]]()

  return traverse_util.unflatten_dict({
      path: fill(path, leaf.shape).astype(np.float32)
      for path, leaf in traverse_util.flatten_dict(shapes).items()})


def metadata(depth, width_multiplier):
  return export_metadata(depth=depth, width_multiplier=width_multiplier, step=STEP,
                         source='/runs/test')


def assert_backbone_equal(actual, expected):
  """Every backbone leaf, params and batch stats, bit for bit."""
  for collection in ('params', 'batch_stats'):
    flat_actual = traverse_util.flatten_dict(actual[collection]['backbone'])
    flat_expected = traverse_util.flatten_dict(expected[collection]['backbone'])
    assert flat_actual.keys() == flat_expected.keys()
    for path, value in flat_expected.items():
      assert flat_actual[path].dtype == value.dtype, path
      np.testing.assert_array_equal(flat_actual[path], value, err_msg=str(path))


def head_leaves(variables):
  return {path: value for path, value in traverse_util.flatten_dict(variables['params']).items()
          if path[0] != 'backbone'}


def test_interop_imports_without_torch():
  code = ('import sys, vclr_jax.interop, vclr_jax.interop.convert, vclr_jax.export; '
          'assert "torch" not in sys.modules, "torch imported"')
  subprocess.run([sys.executable, '-c', code], check=True)


# ResNet-50 at full width, the model users export.

@pytest.fixture(scope='module')
def resnet50():
  return random_variables(VCLR(depth=50), seed=1)


@pytest.fixture(scope='module')
def resnet50_torchvision_export(resnet50, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('export') / 'vclr_r50.pth')
  verification = export_and_verify(resnet50, out, 'torchvision', metadata(50, 1.0))
  return out, verification


def test_torchvision_export_loads_into_resnet50_strictly_except_fc(resnet50_torchvision_export):
  out, _ = resnet50_torchvision_export
  state = torch.load(out, weights_only=True)
  model = torchvision.models.resnet50()
  keys = model.load_state_dict(state, strict=False)
  assert keys.missing_keys == ['fc.weight', 'fc.bias'] and keys.unexpected_keys == []
  # Same order as torchvision (scripts that zip keys by position work too).
  assert list(state) == [k for k in model.state_dict() if not k.startswith('fc.')]
  model.fc = torch.nn.Identity()
  model.load_state_dict(state, strict=True)
  with open(metadata_path(out)) as f:
    recorded = json.load(f)
  assert recorded['step'] == STEP and recorded['architecture'] == 'resnet50'
  assert recorded['input_mean'] == [0.485, 0.456, 0.406]
  assert recorded['input_std'] == [0.229, 0.224, 0.225] and recorded['input_channels'] == 'RGB'


def test_torchvision_resnet50_features_match_at_224px(resnet50_torchvision_export):
  _, verification = resnet50_torchvision_export
  assert verification.image_size == 224
  assert verification.max_abs_feature > 0.1  # non-trivial features
  assert verification.max_abs_difference < FLOAT32_EXPORT_ATOL


def test_torchvision_resnet50_features_match_at_80px(resnet50, resnet50_torchvision_export):
  out, _ = resnet50_torchvision_export
  verification = verify_export(out, 'torchvision', resnet50, depth=50, width_multiplier=1.0,
                               image_size=80)
  assert verification.max_abs_feature > 0.1
  assert verification.max_abs_difference < FLOAT32_EXPORT_ATOL


def test_resnet50_round_trip_is_bit_exact(resnet50, resnet50_torchvision_export, capsys):
  out, _ = resnet50_torchvision_export
  template = random_variables(VCLR(depth=50), seed=2)
  restored = load_pytorch_variables(out, template)
  assert_backbone_equal(restored, resnet50)
  # A torchvision file has no heads: they stay as in the template, and are listed.
  for path, value in head_leaves(template).items():
    np.testing.assert_array_equal(head_leaves(restored)[path], value)
  printed = capsys.readouterr().out
  assert 'params/video_head/fc0/kernel (PyTorch name fc_tsn.0.weight)' in printed
  assert 'params/order_classifier/bias' in printed


# Every format and depth; small widths keep this cheap.

@pytest.mark.parametrize('depth, width_multiplier, fmt', [
    (18, 0.25, 'mmaction2'), (34, 0.125, 'safetensors'), (50, 0.125, 'torchvision'),
    (50, 0.125, 'mmaction2')])
def test_export_verifies_and_round_trips(depth, width_multiplier, fmt, tmp_path):
  variables = random_variables(VCLR(depth=depth, width_multiplier=width_multiplier), seed=3)
  out = str(tmp_path / f'encoder.{"safetensors" if fmt == "safetensors" else "pth"}')
  verification = export_and_verify(variables, out, fmt, metadata(depth, width_multiplier),
                                   image_size=64)
  assert verification.max_abs_feature > 0.1
  assert verification.max_abs_difference < FLOAT32_EXPORT_ATOL
  template = random_variables(VCLR(depth=depth, width_multiplier=width_multiplier), seed=4)
  assert_backbone_equal(load_pytorch_variables(out, template), variables)


def test_mmaction2_export_uses_its_resnet_names_and_records_metadata(tmp_path):
  variables = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=5)
  out = str(tmp_path / 'tsn_backbone.pth')
  export_and_verify(variables, out, 'mmaction2', metadata(50, 0.125), verify=False)
  checkpoint = torch.load(out, weights_only=True)
  # Names of mmaction2's ResNet (ConvModule = conv + bn), as in its TSN checkpoints.
  for key in ('backbone.conv1.conv.weight', 'backbone.conv1.bn.running_var',
              'backbone.layer1.0.conv3.bn.bias', 'backbone.layer2.0.downsample.conv.weight',
              'backbone.layer2.0.downsample.bn.running_mean',
              'backbone.layer4.2.conv2.bn.num_batches_tracked'):
    assert key in checkpoint['state_dict'], key
  assert not any('.bn1.' in k or 'downsample.0' in k for k in checkpoint['state_dict'])
  assert checkpoint['meta']['step'] == STEP
  assert checkpoint['meta']['input_std'] == [0.229, 0.224, 0.225]


def test_tsm_checkpoint_backbone_is_read(tmp_path):
  variables = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=16)
  out = str(tmp_path / 'tsm.pth')
  export_and_verify(variables, out, 'mmaction2', metadata(50, 0.125), verify=False)
  checkpoint = torch.load(out, weights_only=True)
  # mmaction2's TSM wraps each block's first conv in a temporal shift module ('.net').
  checkpoint['state_dict'] = {
      k.replace('.conv1.conv.', '.conv1.conv.net.') if k.startswith('backbone.layer') else k: v
      for k, v in checkpoint['state_dict'].items()}
  checkpoint['state_dict']['cls_head.fc_cls.weight'] = torch.zeros(400, 256)
  torch.save(checkpoint, out)
  template = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=17)
  assert_backbone_equal(load_pytorch_variables(out, template), variables)


def test_safetensors_export_records_metadata(tmp_path):
  variables = random_variables(VCLR(depth=18, width_multiplier=0.25), seed=6)
  out = str(tmp_path / 'encoder.safetensors')
  export_and_verify(variables, out, 'safetensors', metadata(18, 0.25), verify=False)
  with safe_open(out, 'np') as f:
    recorded = {k: json.loads(v) for k, v in f.metadata().items()}
    assert 'layer1.0.conv1.weight' in f.keys()
  assert recorded['step'] == STEP and recorded['input_mean'] == [0.485, 0.456, 0.406]
  assert recorded['key_layout'] == 'safetensors'


def test_verification_catches_a_wrong_weight(tmp_path):
  variables = random_variables(VCLR(depth=18, width_multiplier=0.25), seed=7)
  out = str(tmp_path / 'encoder.pth')
  export_and_verify(variables, out, 'torchvision', metadata(18, 0.25), verify=False)
  state = torch.load(out, weights_only=True)
  state['layer3.1.bn2.running_var'] *= 2
  torch.save(state, out)
  verification = verify_export(out, 'torchvision', variables, depth=18, width_multiplier=0.25,
                               image_size=64)
  assert not verification.passed


# A run directory, as the trainer writes it.

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  config = tiny_config()
  model = VCLR(depth=config.model.depth, width_multiplier=config.model.width_multiplier)
  variables = random_variables(model, seed=15)
  workdir = str(tmp_path_factory.mktemp('run'))
  checkpointing.write_run_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  checkpointing.save(manager, 7, dict(variables, step=np.int32(7)), force=True)
  manager.wait_until_finished()
  return workdir, variables


def test_export_run_from_a_run_directory(run_dir, tmp_path):
  workdir, variables = run_dir
  out = str(tmp_path / 'tsn_init.pth')
  verification = export_run(workdir, None, 'mmaction2', out, image_size=64)
  assert verification.passed and verification.max_abs_difference < FLOAT32_EXPORT_ATOL
  assert torch.load(out, weights_only=True)['meta']['step'] == 7
  assert_backbone_equal(load_pytorch_variables(out, variables), variables)


def test_export_command_line(run_dir, tmp_path):
  workdir, _ = run_dir
  out = tmp_path / 'encoder.safetensors'
  finished = subprocess.run(
      [sys.executable, '-m', 'vclr_jax.export', f'--workdir={workdir}', '--step=7',
       '--format=safetensors', f'--out={out}', '--verify_image_size=64'],
      capture_output=True, text=True, check=True)
  assert 'max abs feature difference' in finished.stdout and out.exists()


# Imports of other people's files.

def reference_vclr_model(depth, width_multiplier):
  """The released VCLR network: a torchvision ResNet with heads attached as attributes, so its
  state dict has torchvision's backbone keys next to fc_inter/fc_intra/fc_order/fc_tsn (MLPs)
  and fc_order_classifier."""
  model = torchvision_resnet(depth, width_multiplier)
  features = model.layer4[-1].conv1.in_channels
  for name in ('fc_inter', 'fc_intra', 'fc_order', 'fc_tsn'):
    setattr(model, name, torch.nn.Sequential(torch.nn.Linear(features, features),
                                             torch.nn.ReLU(), torch.nn.Linear(features, 128)))
  model.fc_order_classifier = torch.nn.Linear(6 * 128, 4)
  with torch.no_grad():  # non-trivial BatchNorm, as after training
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.2, 0.6)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 2.0)
  return model.eval()


def reference_vclr_outputs(model, frames):
  """What the released code computes, eval mode; its order embeddings are normalised over the
  frame axis."""
  b, t = frames.shape[:2]
  with torch.no_grad():
    features = model(frames.reshape((b * t,) + frames.shape[2:]))
    per_tuple = features.reshape(b, t, -1)
    order = F.normalize(model.fc_order(per_tuple), dim=1).reshape(b, -1)
    return {'inter': F.normalize(model.fc_inter(features), dim=1),
            'intra': F.normalize(model.fc_intra(features), dim=1),
            'video': F.normalize(model.fc_tsn(per_tuple.mean(1)), dim=1),
            'order_logits': model.fc_order_classifier(torch.cat([order, order], dim=1))}


def test_reference_vclr_checkpoint_gives_the_same_embeddings_and_order_logits(tmp_path, capsys):
  depth, width_multiplier = 50, 0.125
  torch.manual_seed(0)
  model = reference_vclr_model(depth, width_multiplier)
  path = str(tmp_path / 'ckpt_epoch_400.pth')
  # As the released train_vclr.py saves it: DistributedDataParallel's 'module.' prefix.
  torch.save({'model': {'module.' + k: v for k, v in model.state_dict().items()},
              'model_ema': {'module.' + k: v * 0 for k, v in model.state_dict().items()},
              'opt': argparse.Namespace(batch_size=32), 'epoch': 400}, path)

  ours = VCLR(depth=depth, width_multiplier=width_multiplier, order_norm='over_frames')
  variables = load_pytorch_variables(path, random_variables(ours, seed=8))
  printed = capsys.readouterr().out
  assert 'Not in the file' not in printed and 'unexpected' not in printed
  assert 'model_ema' in printed  # listed as ignored

  # Both sides in float64, so that a match to 1e-10 shows the same computation (float32
  # rounding through 50 layers in two libraries would blur it to ~1e-6).
  frames = np.random.default_rng(0).standard_normal((2, 3, 64, 64, 3))
  with jax.enable_x64(True):
    ours64 = VCLR(depth=depth, width_multiplier=width_multiplier, order_norm='over_frames',
                  dtype=jnp.float64)
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
    actual = jax.jit(ours64.apply, static_argnames='train')(variables, frames, train=False)
    actual = jax.device_get(actual)
  expected = reference_vclr_outputs(model.double(),
                                    torch.from_numpy(frames.transpose(0, 1, 4, 2, 3)))
  for name, value in expected.items():
    assert np.abs(value.numpy()).max() > 0.1, name  # non-trivial outputs
    np.testing.assert_allclose(actual[name], value.numpy(), atol=1e-10, rtol=0, err_msg=name)


@pytest.fixture(scope='module')
def moco_checkpoint(tmp_path_factory):
  """A MoCo v2 checkpoint as its main_moco.py saves it, with a 'query' and a 'key' encoder."""
  query = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=9)
  key = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=10)
  rng = np.random.default_rng(11)
  projection = {'fc.0.weight': rng.normal(size=(256, 256)), 'fc.0.bias': rng.normal(size=256),
                'fc.2.weight': rng.normal(size=(128, 256)), 'fc.2.bias': rng.normal(size=128)}
  projection = {k: v.astype(np.float32) for k, v in projection.items()}
  state = {}
  for prefix, encoder in (('module.encoder_q.', query), ('module.encoder_k.', key)):
    for name, value in {**backbone_state_dict(encoder), **projection}.items():
      state[prefix + name] = torch.from_numpy(value)
  state['module.queue'] = torch.randn(128, 16)
  state['module.queue_ptr'] = torch.zeros(1, dtype=torch.long)
  path = str(tmp_path_factory.mktemp('moco') / 'moco_v2_200ep_pretrain.pth.tar')
  torch.save({'epoch': 200, 'arch': 'resnet50', 'state_dict': state, 'optimizer': {}}, path)
  return path, query, projection


def test_moco_checkpoint_initialises_all_four_heads_from_its_projection_head(moco_checkpoint,
                                                                            capsys):
  path, query, projection = moco_checkpoint
  template = random_variables(VCLR(depth=50, width_multiplier=0.125), seed=12)
  variables = load_pytorch_variables(path, template)
  assert_backbone_equal(variables, query)  # the query encoder, not the key encoder
  params = variables['params']
  for head in ('inter_head', 'intra_head', 'video_head', 'order_head'):
    np.testing.assert_array_equal(params[head]['fc0']['kernel'], projection['fc.0.weight'].T)
    np.testing.assert_array_equal(params[head]['fc0']['bias'], projection['fc.0.bias'])
    np.testing.assert_array_equal(params[head]['fc2']['kernel'], projection['fc.2.weight'].T)
    np.testing.assert_array_equal(params[head]['fc2']['bias'], projection['fc.2.bias'])
  # MoCo has no order classifier: kept from the template and listed.
  np.testing.assert_array_equal(params['order_classifier']['kernel'],
                                template['params']['order_classifier']['kernel'])
  printed = capsys.readouterr().out
  assert 'params/order_classifier/kernel' in printed and 'MoCo key encoder' in printed


def test_converter_writes_an_orbax_checkpoint(moco_checkpoint, tmp_path):
  path, query, projection = moco_checkpoint
  out = tmp_path / 'moco_orbax'
  convert(path, str(out))  # depth and width inferred from the file
  restored = ocp.StandardCheckpointer().restore(str(out))
  assert set(restored) == {'params', 'batch_stats'}
  assert_backbone_equal(restored, query)
  np.testing.assert_array_equal(restored['params']['video_head']['fc2']['kernel'],
                                projection['fc.2.weight'].T)
  # Not in MoCo: freshly initialised (torch.nn.Linear's U(+-1/sqrt(768))).
  classifier = np.asarray(restored['params']['order_classifier']['kernel'])
  assert classifier.shape == (768, 4) and 0 < np.abs(classifier).max() <= 1 / np.sqrt(768)


# Errors.

@pytest.fixture
def small_export(tmp_path):
  variables = random_variables(VCLR(depth=18, width_multiplier=0.25), seed=13)
  out = str(tmp_path / 'r18.pth')
  export_and_verify(variables, out, 'torchvision', metadata(18, 0.25), verify=False)
  return out, variables


def test_missing_and_unexpected_keys_are_listed(small_export, capsys):
  out, variables = small_export
  state = torch.load(out, weights_only=True)
  del state['layer1.0.conv1.weight']
  state['extra.weight'] = torch.zeros(3)
  torch.save(state, out)
  template = random_variables(VCLR(depth=18, width_multiplier=0.25), seed=14)
  restored = load_pytorch_variables(out, template)
  printed = capsys.readouterr().out
  assert 'params/backbone/layer1_0/conv1/kernel (PyTorch name layer1.0.conv1.weight)' in printed
  assert 'extra.weight' in printed
  np.testing.assert_array_equal(restored['params']['backbone']['layer1_0']['conv1']['kernel'],
                                template['params']['backbone']['layer1_0']['conv1']['kernel'])


def test_shape_mismatch_is_an_error_naming_the_key(small_export):
  out, _ = small_export
  state = torch.load(out, weights_only=True)
  state['layer2.0.conv1.weight'] = torch.zeros(1, 1, 3, 3)
  torch.save(state, out)
  with pytest.raises(ValueError, match=r"r18\.pth: 'layer2\.0\.conv1\.weight' has shape"):
    load_pytorch_variables(out, random_variables(VCLR(depth=18, width_multiplier=0.25), seed=0))


def test_a_file_of_another_depth_is_an_error_naming_the_key(small_export):
  out, _ = small_export
  with pytest.raises(ValueError, match=r"'layer1\.0\.conv1\.weight' has shape"):
    load_pytorch_variables(out, random_variables(VCLR(depth=50, width_multiplier=0.25), seed=0))


def test_a_file_without_backbone_weights_is_an_error(tmp_path):
  path = str(tmp_path / 'other.pth')
  torch.save({'encoder.weight': torch.zeros(2)}, path)
  with pytest.raises(ValueError, match='none of its 1 tensors is a weight of the ResNet'):
    load_pytorch_variables(path, random_variables(VCLR(depth=18, width_multiplier=0.25), seed=0))
