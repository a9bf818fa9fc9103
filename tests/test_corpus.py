"""`tapir.tracking.corpus` and `experiments.track --videos`: a generated corpus split by two concurrent processes,
a killed run resumed, outputs equal to `--video X --save`; tiny videos, a tiny random model."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tapir import video as video_io
from tapir.tracking import cli
from tapir.tracking import corpus
from tests.conftest import save_random_tapir

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32))
TINY_JSON = json.dumps(TINY)
# Relative path -> (frames, height, width). Two 'clip.mp4' in different folders. Sorted, the lengths alternate:
# each shard of two compiles one video shape, and the second video of one process compiles anew (a second or so,
# so a kill after the first output lands before the second).
GOOD = {'a/clip.mp4': (4, 32, 32), 'a/deep/long.mp4': (5, 32, 48), 'b/clip.mp4': (4, 48, 32), 'b/d.mp4': (5, 32, 32),
        'c.mp4': (4, 32, 32), 'e.mp4': (5, 32, 32)}
BAD = ('b/truncated.mp4', 'bad/noise.mp4')  # half an mp4 (its index is at the end), and random bytes


def _env():
  return {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


def _runner(*flags, wait=True):
  command = [sys.executable, '-m', 'experiments.track', *flags]
  if not wait:
    return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  return save_random_tapir(tmp_path_factory.mktemp('ckpt') / 'tiny_tapir.npy', **TINY)


@pytest.fixture(scope='module')
def model_flags(tiny_checkpoint):
  return ('--checkpoint', tiny_checkpoint, '--model_overrides', TINY_JSON, '--grid', '2')


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  for relative, (t, h, w) in GOOD.items():
    coarse = rng.integers(0, 256, (t, h // 8, w // 8, 3), dtype=np.uint8)
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    video_io.write_video(root / relative, np.kron(coarse, np.ones((1, 8, 8, 1), np.uint8)), fps=10)
  whole = (root / 'b/clip.mp4').read_bytes()
  (root / BAD[0]).write_bytes(whole[:len(whole) // 2])
  (root / BAD[1]).parent.mkdir()
  (root / BAD[1]).write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
  return root


def _pattern(root):
  return str(root / '**' / '*.mp4')


def _outputs(save_dir):
  return {str(p.relative_to(save_dir))[:-len(corpus.SUFFIX)]: p.stat().st_mtime_ns for p in save_dir.rglob('*.npz')}


@pytest.fixture(scope='module')
def split_run(corpus_dir, model_flags, tmp_path_factory):
  """Two processes at once, shards 0/2 and 1/2, into one save_dir."""
  save_dir = tmp_path_factory.mktemp('tracks')
  procs = [_runner('--videos', _pattern(corpus_dir), '--save_dir', str(save_dir), '--shard', f'{i}/2', *model_flags,
                   wait=False) for i in range(2)]
  results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
  summaries = [json.loads((save_dir / f'summary-{i}-of-2.json').read_text()) for i in range(2)]
  return save_dir, results, summaries


def test_two_processes_split_the_corpus(corpus_dir, split_run):
  save_dir, results, summaries = split_run
  shards = [[item.relative for item in corpus.take_shard(corpus.list_corpus(_pattern(corpus_dir), str(save_dir)), i, 2)]
            for i in range(2)]
  for (code, out, err), summary, shard in zip(results, summaries, shards):
    assert sorted(summary['done'] + list(summary['failed'])) == sorted(shard), err[-3000:]
    assert not summary['skipped'] and summary['total'] == len(shard)
    assert code == (corpus.EXIT_SOME_FAILED if summary['failed'] else 0), err[-3000:]
    assert f'{len(summary["done"])} done' in out
  done = [summary['done'] for summary in summaries]
  assert not set(done[0]) & set(done[1]) and sorted(done[0] + done[1]) == sorted(GOOD)  # each video once
  failed = {**summaries[0]['failed'], **summaries[1]['failed']}
  assert sorted(failed) == sorted(BAD)
  assert all(reason.startswith('cannot read video') and '\n' not in reason for reason in failed.values()), failed
  assert sorted(_outputs(save_dir)) == sorted(GOOD)
  for relative, (t, _, _) in GOOD.items():
    with np.load(save_dir / (relative + corpus.SUFFIX)) as saved:
      assert saved['tracks'].shape == (4, t, 2) and saved['visible'].shape == (4, t)
      assert saved['query_points'].shape == (4, 3) and float(saved['fps']) == pytest.approx(10)
      assert str(saved['video']) == str(corpus_dir / relative) and str(saved['relative']) == relative


def test_corpus_file_equals_single_video_save(corpus_dir, split_run, model_flags, tmp_path):
  save_dir = split_run[0]
  single = tmp_path / 'single.npz'
  proc = _runner('--video', str(corpus_dir / 'b/clip.mp4'), '--save', str(single), *model_flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(single) as expected, np.load(save_dir / 'b/clip.mp4.npz') as got:
    assert set(expected.files) <= set(got.files)
    for key in expected.files:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)  # the same numbers and settings


def test_killed_run_resumes(corpus_dir, model_flags, tiny_checkpoint, tmp_path, monkeypatch):
  save_dir = tmp_path / 'tracks'
  proc = _runner('--videos', _pattern(corpus_dir), '--save_dir', str(save_dir), '--shard', '0/1', *model_flags,
                 wait=False)
  deadline = time.monotonic() + 240
  while not (save_dir.is_dir() and _outputs(save_dir)):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  before = _outputs(save_dir)
  assert 1 <= len(before) < len(GOOD), before  # killed part way
  assert not list(save_dir.glob('summary-*'))
  damaged = save_dir / 'e.mp4.npz'
  damaged.write_bytes(b'PK\x03\x04 half a file')  # as if written by something non-atomic, then killed
  clears = []  # with room for one compiled shape, each change of video length drops the compiled code
  monkeypatch.setattr(corpus, 'MAX_COMPILED_SHAPES', 1)
  monkeypatch.setattr(corpus.jax, 'clear_caches', lambda: clears.append(1))
  summary = corpus.track_corpus(_pattern(corpus_dir), str(save_dir), tiny_checkpoint, model_overrides=TINY_JSON,
                                grid=2, shard=(0, 1), progress=False)
  assert sorted(summary.skipped) == sorted(before)
  assert sorted(summary.done) == sorted(set(GOOD) - set(before)) and 'e.mp4' in summary.done
  assert sorted(summary.failed) == sorted(BAD)
  lengths = [GOOD[relative][0] for relative in summary.done]
  assert len(clears) == sum(a != b for a, b in zip(lengths, lengths[1:]))
  after = _outputs(save_dir)
  assert all(after[relative] == mtime for relative, mtime in before.items())  # not recomputed
  assert np.load(damaged)['tracks'].shape == (4, 5, 2)  # redone
  written = json.loads((save_dir / 'summary-0-of-1.json').read_text())
  assert written['skipped'] == summary.skipped and written['failed'] == summary.failed
  with pytest.raises(ValueError, match="other settings.*'grid 2' here, 'grid 3' now"):
    corpus.is_done(str(save_dir / 'a/clip.mp4.npz'), {**written['settings'], 'queries': 'grid 3'})


def test_sharding_is_disjoint_complete_and_balanced():
  items = [f'v{k}.mp4' for k in range(7)]
  for count in range(1, 5):
    shards = [corpus.take_shard(items, i, count) for i in range(count)]
    assert sorted(sum(shards, [])) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
  assert corpus.take_shard(items, 1, 3) == ['v1.mp4', 'v4.mp4']  # file k goes to shard k % n
  assert corpus.parse_shard('3/4') == (3, 4) and corpus.parse_shard(' 0 / 1 ') == (0, 1)
  for bad in ('2/2', '-1/2', '0/0', '1', 'a/b', '0/2/3', '', '1.5/2'):
    with pytest.raises(ValueError, match='shard'):
      corpus.parse_shard(bad)
  for bad in ((True, 2), (0, 2.0), (5, 3)):
    with pytest.raises(ValueError, match='shard'):
      corpus.take_shard(items, *bad)


def test_names_mirror_the_tree_below_the_pattern_root(corpus_dir, tmp_path):
  assert corpus.pattern_root('data/**/*.mp4') == 'data' and corpus.pattern_root('*.mp4') == ''
  assert corpus.pattern_root('/x/y/v?.mp4') == '/x/y' and corpus.pattern_root('a/b.mp4') == 'a'
  save_dir = corpus_dir / 'tracks'  # inside the corpus: its files are not videos of it
  (save_dir / 'old').mkdir(parents=True)
  (save_dir / 'old' / 'painted.mp4').write_bytes(b'')
  items = corpus.list_corpus(_pattern(corpus_dir), str(save_dir))
  assert [item.relative for item in items] == sorted([*GOOD, *BAD])
  assert len({item.output for item in items}) == len(items)
  assert {item.output for item in items if item.relative.endswith('/clip.mp4')} == {
      str(save_dir / 'a' / 'clip.mp4.npz'), str(save_dir / 'b' / 'clip.mp4.npz')}
  with pytest.raises(ValueError, match='no files match'):
    corpus.list_corpus(str(tmp_path / '*.mov'), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='save_dir'):
    corpus.list_corpus(_pattern(corpus_dir), '')
  with pytest.raises(ValueError, match='videos'):
    corpus.list_corpus('', 'out')
  with pytest.raises(ValueError, match='relative'):
    corpus.output_path(str(save_dir), '../elsewhere.mp4')


def test_damaged_output_is_not_done(tmp_path, caplog):
  path = tmp_path / 'v.mp4.npz'
  assert not corpus.is_done(str(path), {})
  path.write_bytes(b'not a zip')
  assert not corpus.is_done(str(path), {}) and 'damaged' in caplog.text
  np.savez(path, tracks=np.zeros((1, 2, 2)))  # loads, but no visible / query_points
  assert not corpus.is_done(str(path), {})
  with pytest.raises(ValueError, match='result must hold'):
    corpus.write_tracks(str(path), cli.TrackResult(np.zeros((2, 3, 2)), np.zeros((2, 4), bool), np.zeros((2, 3)), 10))
  reason = corpus.failure_reason(ValueError('cannot read video v: Unable to parse video header: ffmpeg version 7\n'
                                            '  libavutil 59\nError opening input files: Invalid data'))
  assert reason == 'cannot read video v: Unable to parse video header ... Error opening input files: Invalid data'
  assert corpus.failure_reason(OSError('disk full')) == 'OSError: disk full'


@pytest.mark.parametrize('flags, message', [
    (('--video', 'x.mp4', '--videos', '*.mp4'), 'not both'),
    (('--grid', '2'), 'give --video'),
    (('--videos', '*.mp4', '--out', 'o.mp4'), '--out go with one --video'),
    (('--videos', '*.mp4'), 'needs --save_dir'),
    (('--videos', '*.mp4', '--save_dir', 'd', '--shard', '2/2', '--random_weights'), 'shard index'),
    (('--video', 'x.mp4', '--shard', '0/2', '--out', 'o.mp4'), 'go with --videos'),
])
def test_runner_usage_errors(flags, message):
  proc = _runner(*flags)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
