"""Checks markdown docs against the repository, so that they cannot drift from the code.

In every fenced shell block (```bash, ```sh, ```shell, ```console or a plain ```):
- `python -m MODULE` names a module of the repository (or an installed one), and
  `python path.py` a file of the repository;
- every `--flag` given to a repository entry point is one that the entry point defines: read
  from its source (absl `flags.DEFINE_*` and `config_flags.DEFINE_config_file`, argparse
  `add_argument`), not from a list kept here;
- `--config=FILE` of an entry point that takes a config file names a file that exists, and
  every `--config.a.b=...` after it names a key of that config (its get_config()).
Outside code, every relative link and image resolves, and a `#anchor` names a heading of the
target page (GitHub's anchors).

check(paths, repo) returns the problems as 'path:line: what' strings; check_notebook_links
does the link part for a notebook's markdown cells.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import sys

SHELL_LANGUAGES = frozenset({'', 'bash', 'sh', 'shell', 'console'})
REPO_PACKAGES = ('vclr_jax', 'input_pipeline', 'configs', 'benchmarks', 'scripts', 'tests')
# Flags every absl or argparse entry point answers without defining them.
BUILTIN_FLAGS = frozenset({'help', 'helpfull', 'flagfile'})

_FENCE = re.compile(r'^\s*(```+|~~~+)\s*([\w+-]*)')
_PYTHON = re.compile(r'(?:^|(?<=[\s;&|(]))python3?\s+'
                     r'(?:-m\s+(?P<module>[\w.]+)|(?P<script>[\w./-]+\.py))(?P<args>[^;&|]*)')
_FLAG = re.compile(r'(?<![\w-])--(?P<name>[A-Za-z][\w-]*)(?P<keys>(?:\.[\w-]+)*)'
                   r'(?:=(?P<value>\S*))?')
_ASSIGNMENT = re.compile(r'^\s*(?:export\s+)?(?P<name>[A-Za-z_]\w*)='
                         r'(?P<quote>["\']?)(?P<value>.*)(?P=quote)\s*$')
_VARIABLE = re.compile(r'\$\{?([A-Za-z_]\w*)\}?')
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]'
                   r'\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_HTML_SRC = re.compile(r'<(?:img|a)\b[^>]*\b(?:src|href)="(?P<target>[^"]+)"')
_INLINE_CODE = re.compile(r'(`+).*?\1')


def fenced_blocks(text: str):
  """Yields (language, first line number, lines) of every fenced code block."""
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    match = _FENCE.match(lines[i])
    if match:
      fence, language, start = match.group(1), match.group(2).lower(), i + 1
      i += 1
      body = []
      while i < len(lines) and not lines[i].strip().startswith(fence):
        body.append(lines[i])
        i += 1
      yield language, start + 1, body
    i += 1


def prose_lines(text: str, keep_inline_code: bool = False):
  """Yields (line number, line) of the text outside fenced code, inline code removed unless
  ``keep_inline_code`` (headings keep their code's text in anchors)."""
  in_fence = None
  for number, line in enumerate(text.splitlines(), 1):
    match = _FENCE.match(line)
    if in_fence:
      if line.strip().startswith(in_fence):
        in_fence = None
      continue
    if match:
      in_fence = match.group(1)
      continue
    yield number, line if keep_inline_code else _INLINE_CODE.sub('', line)


def shell_commands(first_line: int, lines: list[str]):
  """Yields (line number, command text) of a shell block: continuations joined, comments
  dropped, $VARIABLES assigned in the block substituted."""
  variables = {}
  logical, start = '', None
  for number, line in enumerate(lines, first_line):
    line = re.sub(r'(^|\s)#.*$', '', line)
    if start is None:
      start = number
    if line.rstrip().endswith('\\'):
      logical += line.rstrip()[:-1] + ' '
      continue
    logical += line
    text = _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), logical)
    assignment = _ASSIGNMENT.match(text)
    if assignment and not text.lstrip().startswith('python'):
      variables[assignment.group('name')] = assignment.group('value')
    elif text.strip():
      yield start, text
    logical, start = '', None


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  heading = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())
  return re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')


@functools.lru_cache(maxsize=None)
def heading_anchors(path: str) -> frozenset[str]:
  with open(path, encoding='utf-8') as f:
    text = f.read()
  anchors, seen = set(), {}
  for _, line in prose_lines(text, keep_inline_code=True):
    match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
    if match:
      anchor = github_anchor(match.group(1))
      count = seen.get(anchor, 0)
      seen[anchor] = count + 1
      anchors.add(anchor if count == 0 else f'{anchor}-{count}')
  return frozenset(anchors)


class EntryPoint:
  """The flags an entry point's source defines."""

  def __init__(self, path: str):
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    self.flags, self.config_flags = set(BUILTIN_FLAGS), set()
    for node in ast.walk(tree):
      if not isinstance(node, ast.Call):
        continue
      func = (node.func.attr if isinstance(node.func, ast.Attribute)
              else getattr(node.func, 'id', ''))
      strings = [arg.value for arg in node.args
                 if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
      if func.startswith('DEFINE') and strings:
        self.flags.add(strings[0])
        if func in ('DEFINE_bool', 'DEFINE_boolean'):
          self.flags.add('no' + strings[0])
        if func.startswith('DEFINE_config'):
          self.config_flags.add(strings[0])
      elif func == 'add_argument':
        self.flags.update(s[2:] for s in strings if s.startswith('--'))


@functools.lru_cache(maxsize=None)
def entry_point(path: str) -> EntryPoint:
  return EntryPoint(path)


@functools.lru_cache(maxsize=None)
def load_config(path: str, argument: str | None):
  """The ConfigDict of a config file, loaded as config_flags loads it (get_config([arg]))."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if repo not in sys.path:
    sys.path.insert(0, repo)
  spec = importlib.util.spec_from_file_location(f'docs_check_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument is not None else module.get_config()


def has_key(config, keys: list[str]) -> bool:
  node = config
  for key in keys:
    try:
      if key not in node:
        return False
    except TypeError:  # a leaf value
      return False
    node = node[key]
  return True


def _module_path(repo: str, module: str) -> str | None:
  """The file `python -m module` runs, if the module belongs to the repository."""
  base = os.path.join(repo, *module.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__main__.py')):
    if os.path.isfile(candidate):
      return candidate
  return None


def check_command(repo: str, where: str, command: str) -> list[str]:
  problems = []
  for match in _PYTHON.finditer(command):
    module, script, args = match.group('module'), match.group('script'), match.group('args')
    if module:
      path = _module_path(repo, module)
      if path is None:
        if module.split('.')[0] in REPO_PACKAGES or importlib.util.find_spec(
            module.split('.')[0]) is None:
          problems.append(f'{where}: `python -m {module}`: no such module')
        continue  # an installed tool (pytest, ...): its flags are its own
      name = f'python -m {module}'
    else:
      path = os.path.join(repo, script)
      name = f'python {script}'
      if not os.path.isfile(path):
        problems.append(f'{where}: `{name}`: no such file')
        continue
    entry = entry_point(path)
    config = None
    for flag in _FLAG.finditer(args.replace('[', ' ').replace(']', ' ')):
      flag_name, keys, value = flag.group('name'), flag.group('keys'), flag.group('value')
      if flag_name not in entry.flags:
        problems.append(f'{where}: `{name}` defines no flag --{flag_name}')
        continue
      if flag_name not in entry.config_flags:
        continue
      if not keys:
        if value:
          file_name, _, argument = value.partition(':')
          config_path = os.path.join(repo, file_name)
          if not os.path.isfile(config_path):
            problems.append(f'{where}: --{flag_name}={value}: no such config file')
            config = False
          else:
            config = load_config(config_path, argument or None)
      elif config and not has_key(config, keys[1:].split('.')):
        problems.append(f'{where}: --{flag_name}{keys}: not a key of the config')
  return problems


def check_links(repo: str, path: str, text: str) -> list[str]:
  problems = []
  for number, line in prose_lines(text):
    targets = [m.group('target') for m in _LINK.finditer(line)]
    targets += [m.group('target') for m in _HTML_SRC.finditer(line)]
    for target in targets:
      if re.match(r'^[a-z][\w+.-]*:', target):  # https:, mailto:, ...
        continue
      file_part, _, anchor = target.partition('#')
      resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                  if file_part else path)
      where = f'{os.path.relpath(path, repo)}:{number}'
      if not os.path.exists(resolved):
        problems.append(f'{where}: broken link {target}')
      elif anchor and resolved.endswith('.md') and anchor not in heading_anchors(resolved):
        problems.append(f'{where}: {target}: no heading with that anchor')
  return problems


def check_notebook_links(path: str, repo: str) -> list[str]:
  """The relative links of a Jupyter notebook's markdown cells (lines count within them)."""
  import json  # pylint: disable=g-import-not-at-top
  with open(path, encoding='utf-8') as f:
    cells = json.load(f)['cells']
  text = '\n'.join(''.join(cell['source']) for cell in cells if cell['cell_type'] == 'markdown')
  return check_links(repo, path, text)


def check(paths, repo: str) -> list[str]:
  """Every problem of the markdown files ``paths``, as 'path:line: what'."""
  problems = []
  for path in paths:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    for language, first_line, lines in fenced_blocks(text):
      if language not in SHELL_LANGUAGES:
        continue
      for number, command in shell_commands(first_line, lines):
        problems += check_command(repo, f'{os.path.relpath(path, repo)}:{number}', command)
    problems += check_links(repo, path, text)
  return problems
