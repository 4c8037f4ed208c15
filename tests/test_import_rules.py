"""The import rules of docs/development.md, read from the source (no module is imported):

- no circle among the modules of input_pipeline/ (the TFDS builder uses the record code,
  never the reverse);
- input_pipeline/ imports from vclr_jax/ only the modules that state shared contracts, and
  those import nothing of the project;
- the record code names the TFDS builder's configs and version without importing it.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ('vclr_jax', 'input_pipeline', 'configs')
# vclr_jax modules that state contracts shared with input_pipeline/: the batch layout, the
# short-error helper and the quiet start (TensorFlow's import noise filtered).
CONTRACT_MODULES = frozenset({'vclr_jax.batch', 'vclr_jax.cli_errors', 'vclr_jax.quiet_logs'})


def module_files(package):
  for folder, _, files in os.walk(os.path.join(REPO, package)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        yield module.removesuffix('.__init__'), path


def project_imports(path):
  """The project modules a file imports, at any depth (function-level imports count too)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from input_pipeline import records` imports the module input_pipeline.records
      names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
    else:
      continue
    found.update(name for name in names if name.split('.')[0] in PROJECT_PACKAGES)
  return found


def import_graph(package):
  modules = dict(module_files(package))
  return {module: {name for name in project_imports(path) if name in modules and name != module
                   and not module.startswith(name + '.')}  # a package's own __init__
          for module, path in modules.items()}


def find_cycle(graph):
  """One cycle of the graph as a list of modules, or None."""
  state = {}

  def visit(module, trail):
    state[module] = 'open'
    for name in sorted(graph.get(module, ())):
      if state.get(name) == 'open':
        return trail[trail.index(name):] + [name]
      if name not in state:
        cycle = visit(name, trail + [name])
        if cycle:
          return cycle
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_circle_in_input_pipeline():
  graph = import_graph('input_pipeline')
  assert 'input_pipeline.vclr_videos.vclr_videos_dataset_builder' in graph
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_record_code_does_not_import_the_tfds_builder():
  imports = project_imports(os.path.join(REPO, 'input_pipeline', 'records.py'))
  assert not any(name.startswith('input_pipeline.vclr_videos') for name in imports)


def test_input_pipeline_imports_only_the_contract_modules_of_vclr_jax():
  for module, path in module_files('input_pipeline'):
    from_vclr_jax = {name for name in project_imports(path)
                     if name.startswith('vclr_jax.') or name == 'vclr_jax'}
    # `from vclr_jax import batch` also yields the bare package name
    assert from_vclr_jax - {'vclr_jax'} <= CONTRACT_MODULES, (module, from_vclr_jax)


def test_the_contract_modules_import_nothing_of_the_project():
  for module in CONTRACT_MODULES:
    path = os.path.join(REPO, *module.split('.')) + '.py'
    assert project_imports(path) == set(), module


def test_the_tfds_builder_defines_the_configs_the_record_code_names():
  # pylint: disable=g-import-not-at-top
  from input_pipeline import records
  from input_pipeline.vclr_videos import vclr_videos_dataset_builder
  builder = vclr_videos_dataset_builder.Builder
  assert tuple(config.name for config in builder.BUILDER_CONFIGS) == records.TFDS_CONFIGS
  assert str(builder.VERSION) == records.TFDS_VERSION
