"""notebooks/tapir_demo.ipynb runs end to end (nbclient, a real kernel), with a tiny model on a small built-in clip.

The notebook's cell tagged 'parameters' is replaced by the values below; every other cell runs as a user would run
it, so a renamed function or a changed signature fails here, not in someone's Colab.
"""

import json
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'tapir_demo.ipynb'
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, num_pips_iter=1,
            initial_resolution=(32, 32), pyramid_level=0)
PARAMETERS = f"""CHECKPOINT = None
PRESET = 'tapir'
ONLINE_CHECKPOINT = None
ONLINE_PRESET = 'causal_tapir'
MODEL_OVERRIDES = {TINY!r}
CLIP_SIZE = 48
CLIP_FRAMES = 6
GRID = 3"""


def _outputs_text(cell) -> str:
  texts = []
  for output in cell.get('outputs', []):
    texts.append(output.get('text', ''))
    texts.extend(str(v) for k, v in output.get('data', {}).items() if k.startswith('text/'))
  return '\n'.join(texts)


def test_notebook_runs_end_to_end(tmp_path):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, 'the notebook needs exactly one cell tagged "parameters"'
  assert set(_names(tagged[0].source)) == set(_names(PARAMETERS)), 'the test sets every parameter the notebook has'
  tagged[0].source = PARAMETERS
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  code = [c for c in notebook.cells if c.cell_type == 'code']
  errors = [o for c in code for o in c.get('outputs', []) if o.get('output_type') == 'error']
  assert not errors, errors
  shown = [c for c in code if any('text/html' in o.get('data', {}) for o in c.get('outputs', []))]
  assert len(shown) >= 5, 'the clip, the grid, the chosen points, the online run and the rainbow view are shown'
  everything = '\n'.join(_outputs_text(c) for c in code)
  assert 'video (6, 48, 48, 3)' in everything
  assert 'tracks (9, 6, 2) visible (9, 6)' in everything
  assert 'points at the end: 10' in everything  # the grid's 9 and the one added mid-stream
  scores = next(c for c in code if 'score_example' in c.source)
  assert 'average_jaccard' in _outputs_text(scores)


def _names(source: str) -> list[str]:
  return [line.split('=')[0].strip() for line in source.splitlines() if '=' in line and not line.startswith('#')]


def test_notebook_is_valid_and_clean():
  nbformat = pytest.importorskip('nbformat')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  stored = json.loads(NOTEBOOK.read_text())
  assert all(not c.get('outputs') and c.get('execution_count') is None
             for c in stored['cells'] if c['cell_type'] == 'code'), 'commit the notebook without outputs'
