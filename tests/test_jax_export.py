"""`jax.export` artifacts (`tapir.export.jax_artifact`): the library's numbers, and loadable without `tapir`.

The golden small checkpoint at 64x64 (its visibility is mixed, so equal visibility means something); one offline and
one online artifact per module, each exported once and read back from its file.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import tapir
from tapir.export import jax_artifact
from tests.conftest import REPO
from tests.conftest import SMALL_KWARGS

CAUSAL_KWARGS = {**SMALL_KWARGS, 'use_causal_conv': True}
T, H, W, N = 4, 64, 64, 11
CHUNK = 8  # two chunks for N points: the padded last chunk is exercised


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(3)
  video = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
  queries = (rng.uniform(0, 1, (N, 3)) * np.array([T - 1, H, W])).astype(np.float32)
  queries[:, 0] = np.round(queries[:, 0])
  return video, queries


@pytest.fixture(scope='module')
def offline_path(tmp_path_factory, small_checkpoint):
  artifact = jax_artifact.export_artifact(*small_checkpoint, SMALL_KWARGS, 'offline', query_chunk_size=CHUNK,
                                          source=dict(checkpoint='tapir_small_checkpoint.npy'))
  path = tmp_path_factory.mktemp('artifact') / 'offline.jaxexport'
  size = jax_artifact.write_artifact(path, artifact)
  assert size == os.path.getsize(path)
  return path


@pytest.fixture(scope='module')
def library_offline(small_checkpoint, inputs):
  out = tapir.Tracker(*small_checkpoint, SMALL_KWARGS, query_chunk_size=CHUNK).predict(*inputs)
  assert 0 < out.visible.mean() < 1, 'a visibility check needs both answers'
  return out


def _assert_same_tracking(got, want):
  tracks, visible, occlusion, expected_dist = (np.asarray(x) for x in got)
  np.testing.assert_allclose(tracks, want.tracks, atol=3e-5, rtol=0)
  np.testing.assert_allclose(occlusion, want.occlusion, atol=2e-5, rtol=0)
  np.testing.assert_allclose(expected_dist, want.expected_dist, atol=2e-5, rtol=0)
  assert visible.dtype == bool
  np.testing.assert_array_equal(visible, want.visible)


def test_offline_artifact_equals_the_tracker(offline_path, inputs, library_offline):
  artifact = jax_artifact.read_artifact(offline_path)
  header = artifact.header
  assert header['kind'] == 'offline' and set(header['symbolic']) == {'t', 'n'}
  assert header['fixed'] == dict(height=H, width=W, frames=None, num_points=None)
  inputs_spec = header['functions']['track']['inputs']
  assert inputs_spec == [dict(name='video', shape=['t', H, W, 3], dtype='uint8'),
                         dict(name='query_points', shape=['n', 3], dtype='float32')]
  assert [o['name'] for o in header['functions']['track']['outputs']] == ['tracks', 'visible', 'occlusion',
                                                                           'expected_dist']
  assert header['model_kwargs']['mixer_hidden_dim'] == 128 and header['jax_version'] == jax.__version__
  assert header['source'] == dict(checkpoint='tapir_small_checkpoint.npy')
  _assert_same_tracking(artifact.functions['track'].call(*inputs), library_offline)
  # Another number of frames and points, same file: the dimensions are symbolic.
  video, queries = inputs
  fewer = queries[queries[:, 0] <= 1][:3]
  tracks, visible, _, _ = artifact.functions['track'].call(video[:2], fewer)
  assert tracks.shape == (len(fewer), 2, 2) and visible.shape == (len(fewer), 2)


@pytest.fixture(scope='module')
def online_artifact(tmp_path_factory, small_checkpoint):
  artifact = jax_artifact.export_artifact(*small_checkpoint, CAUSAL_KWARGS, 'online')
  path = tmp_path_factory.mktemp('artifact') / 'online.jaxexport'
  jax_artifact.write_artifact(path, artifact)
  return jax_artifact.read_artifact(path)


def test_online_artifact_equals_the_online_tracker_and_takes_new_points(online_artifact, small_checkpoint, inputs):
  video, queries = inputs
  first, later = queries[:2, 1:], queries[2:4, 1:]  # (y, x); equal counts: start compiles once
  tracker = tapir.OnlineTracker(*small_checkpoint, CAUSAL_KWARGS)
  start, step = online_artifact.functions['start'], online_artifact.functions['step']
  header = online_artifact.header
  assert header['kind'] == 'online' and set(header['symbolic']) == {'n'}
  assert [i['name'] for i in header['functions']['step']['inputs']][:3] == ['frame', 'lowres_0', 'lowres_1']
  tracker.start(video[0], first)
  features, context = start.call(video[0], first)
  seen_visible = []
  for f, frame in enumerate(video):
    if f == 2:  # new points mid-stream: concatenate their start outputs leaf by leaf
      tracker.add_queries(frame, later)
      new_features, new_context = start.call(frame, later)
      features = tuple(np.concatenate([a, b]) for a, b in zip(features, new_features))
      context = tuple(np.concatenate([a, b]) for a, b in zip(context, new_context))
    want = tracker.step(frame)
    tracks, visible, occlusion, expected_dist, context = step.call(frame, features, context)
    np.testing.assert_allclose(tracks, want.tracks, atol=3e-5, rtol=0)
    np.testing.assert_allclose(occlusion, want.occlusion, atol=2e-5, rtol=0)
    np.testing.assert_allclose(expected_dist, want.expected_dist, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(visible, want.visible)
    seen_visible.append(want.visible)
  assert 0 < np.concatenate(seen_visible).mean() < 1


# Run with `python -I` (no PYTHONPATH, no script directory on sys.path) and tapir blocked besides: the editable
# install would otherwise find it.
_CHILD = '''
import importlib.abc, sys
class _NoTapir(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == 'tapir' or name.startswith('tapir.'):
      raise ImportError('tapir is blocked in this process')
sys.meta_path.insert(0, _NoTapir())
sys.path = [p for p in sys.path if p and not p.startswith({repo!r})]
try:
  import tapir
  raise SystemExit('tapir was importable')
except ImportError:
  pass
import jax
import numpy as np
jax.config.update('jax_disable_most_optimizations', True)  # compile fast; same numbers as the suite
PATH = {path!r}
{snippet}
data = np.load({inputs!r})
outputs = fns['track'].call(data['video'], data['query_points'])
np.savez({outputs!r}, **dict(zip(['tracks', 'visible', 'occlusion', 'expected_dist'], outputs)))
assert not [m for m, v in sys.modules.items() if m.split('.')[0] == 'tapir' and v is not None]
'''


def test_artifact_runs_where_tapir_cannot_be_imported(tmp_path, offline_path, inputs, library_offline):
  np.savez(tmp_path / 'inputs.npz', video=inputs[0], query_points=inputs[1])
  code = _CHILD.format(repo=str(REPO), path=str(offline_path), snippet=jax_artifact.CONSUMER_SNIPPET,
                       inputs=str(tmp_path / 'inputs.npz'), outputs=str(tmp_path / 'outputs.npz'))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-I', '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / 'outputs.npz') as out:
    _assert_same_tracking([out[k] for k in ('tracks', 'visible', 'occlusion', 'expected_dist')], library_offline)


def test_the_docstring_shows_the_consumer_snippet():
  lines = [line.strip() for line in jax_artifact.CONSUMER_SNIPPET.replace('PATH', "'tapir.jaxexport'").splitlines()]
  doc = [line.strip() for line in jax_artifact.__doc__.splitlines()]
  assert all(line in doc for line in lines), lines


@pytest.mark.parametrize('kwargs, name', [
    (dict(kind='streaming'), 'kind'),
    (dict(frames=0), 'frames'),
    (dict(num_points=2.5), 'num_points'),
    (dict(height=-8), 'height'),
    (dict(width=True), 'width'),
    (dict(query_chunk_size=0), 'query_chunk_size'),
    (dict(platforms=('cpu', 'gpu9')), 'platforms'),
    (dict(platforms='cpu'), 'platforms'),
    (dict(kind='online'), 'use_causal_conv'),
    (dict(kind='online', frames=3, model_kwargs=CAUSAL_KWARGS), 'frames'),
    (dict(model_kwargs={**SMALL_KWARGS, 'feature_extractor_chunk_size': 2}), 'frames'),
    (dict(model_kwargs={**SMALL_KWARGS, 'mixer_hidden_dim': 64}), 'does not fit'),
    (dict(model_kwargs=[('pyramid_level', 0)]), 'model_kwargs'),
    (dict(source=dict(when=object())), 'source'),
])
def test_bad_arguments_are_named(small_checkpoint, kwargs, name):
  kwargs = {'model_kwargs': SMALL_KWARGS, **kwargs}
  with pytest.raises(ValueError, match=name):
    jax_artifact.export_artifact(*small_checkpoint, **kwargs)


def test_write_refuses_what_is_not_an_artifact(tmp_path):
  with pytest.raises(ValueError, match='artifact must be an Artifact'):
    jax_artifact.write_artifact(tmp_path / 'x.jaxexport', {'header': {}})


def test_files_that_are_not_artifacts_are_refused_by_name(tmp_path, offline_path, golden_dir):
  with pytest.raises(FileNotFoundError, match='missing.jaxexport'):
    jax_artifact.read_artifact(tmp_path / 'missing.jaxexport')
  checkpoint = golden_dir / 'tapir_small_checkpoint.npy'
  with pytest.raises(ValueError, match=f'{checkpoint} is not a TAPIR JAX artifact'):
    jax_artifact.read_artifact(checkpoint)
  data = offline_path.read_bytes()
  magic, header, blobs = data.split(b'\n', 2)
  cases = {
      'truncated': (data[:len(data) // 2], 'truncated'),
      'header': (magic + b'\n{"format_version": 1\n' + blobs, 'header is damaged'),
      'version': (magic + b'\n' + header.replace(b'"format_version": 1', b'"format_version": 7') + b'\n' + blobs,
                  'format_version 7'),
      'blob': (magic + b'\n' + header + b'\n' + bytes(len(blobs)), 'cannot deserialize'),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / f'{name}.jaxexport'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
      jax_artifact.read_artifact(path)
    assert str(path) in str(caught.value)
  assert json.loads(header)['format'] == 'tapir-jax-export'
