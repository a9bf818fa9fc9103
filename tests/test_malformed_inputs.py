"""Generated malformed datasets (issue 22): TAP-Vid pickles / npz / csv and JHMDB files.

Every reader, given random bytes, a truncated or single-byte-corrupted copy of a valid file, or a valid file with
wrong types, dtypes or shapes inside, fails with a ValueError (or the documented type: FileNotFoundError for a
missing file, UnsafePickleError for a forbidden global) whose message names the file, within seconds, creating no
file. A damaged copy may also still parse (a flipped pixel byte is still a video): then the result must be well
formed. Examples are derandomised, so a failure reproduces; `@example`s pin the bugs these tests found.
Checkpoints, videos, query arguments and config flags: test_malformed_cli_inputs.py (it imports these helpers).
"""

import csv
import functools
import io
import pathlib
import pickle
import signal
import tempfile

from hypothesis import example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
from PIL import Image

from tapir import video as video_io
from tapir.data import jhmdb, tapvid

FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None)
SLOW = settings(FAST, max_examples=40)  # examples that run ffmpeg or write several files


# ---------------------------------------------------------------------------------------------------------------
# Helpers: run a reader on a scratch directory, classify the outcome.


class Hang(BaseException):
  """Raised by the alarm: a BaseException, so no reader's `except Exception` can turn a hang into a ValueError."""


def _listing(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob('*'))


def outcome(fn, root: pathlib.Path, *names, types=(ValueError,), missing_ok: bool = False, limit_s: float = 20):
  """Calls `fn()`: its result, or None when it raised one of `types` whose message names one of `names`.

  With `missing_ok`, a FileNotFoundError naming a path under `root` is also accepted (a damaged index naming
  files that do not exist). Any other exception fails the test, as do a call running past `limit_s` and files
  added under `root`.
  """
  before = _listing(root)

  def alarm(*_):
    raise Hang(f'no answer after {limit_s} s')

  previous = signal.signal(signal.SIGALRM, alarm)
  signal.setitimer(signal.ITIMER_REAL, limit_s)
  try:
    result, error = fn(), None
  except Exception as e:  # pylint: disable=broad-except  (classified below)
    result, error = None, e
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  assert _listing(root) == before, 'the reader created files'
  if missing_ok and isinstance(error, FileNotFoundError):
    assert str(root) in str(error), f'the message names no missing file: {error}'
  elif error is not None:
    if not isinstance(error, types):
      raise AssertionError(f'expected {[t.__name__ for t in types]}, got {type(error).__name__}: {error}') from error
    message = str(error)
    assert any(str(n) in message for n in names), f'the message does not name any of {names}: {message}'
  return result


def fails(fn, root, *names, types=(ValueError,)) -> None:
  """`fn()` must raise one of `types` naming one of `names` (see `outcome`)."""
  result = outcome(lambda: ('returned', fn()), root, *names, types=types)
  assert result is None, f'no error: {result}'


def scratch():
  return tempfile.TemporaryDirectory(prefix='malformed_')


def damaged(data: bytes) -> st.SearchStrategy[bytes]:
  """Truncations and single-byte corruptions of `data`."""
  cut = st.integers(0, len(data) - 1).map(lambda n: data[:n])
  flip = st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(
      lambda p: data[:p[0]] + bytes([data[p[0]] ^ p[1]]) + data[p[0] + 1:])
  return st.one_of(cut, flip)


def garbage(*prefixes: bytes) -> st.SearchStrategy[bytes]:
  """Random bytes, optionally after a format's magic (so they reach the parser behind the magic check)."""
  return st.tuples(st.sampled_from((b'',) + prefixes), st.binary(max_size=200)).map(b''.join)


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


@functools.cache
def valid_mp4() -> bytes:
  """A 3-frame 16x16 H.264 video."""
  with scratch() as d:
    path = pathlib.Path(d) / 'clip.mp4'
    video_io.write_video(path, np.kron(np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1) * 20,
                                       np.ones((1, 8, 8, 3), np.uint8)), fps=10)
    return path.read_bytes()


def to_bytes(save) -> bytes:
  f = io.BytesIO()
  save(f)
  return f.getvalue()


# Values that replace a field of a valid structure: wrong types, dtypes, ranks and sizes.
WRONG_VALUES = st.one_of(
    st.none(), st.integers(-3, 3), st.text(max_size=4), st.lists(st.integers(0, 2), max_size=3),
    hnp.arrays(st.sampled_from([np.uint8, np.int64, np.bool_, np.float16, np.float64, np.complex64]),
               hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)))


# ---------------------------------------------------------------------------------------------------------------
# TAP-Vid: pickles (davis, robotap, rgb_stacking, kinetics), npz and csv.

PICKLE_FORMATS = ('davis', 'robotap', 'rgb_stacking', 'kinetics')


def _arrays(t=3, h=8, w=10, n=2):
  rng = np.random.default_rng(0)
  return {'video': rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
          'points': rng.uniform(0.1, 0.9, (n, t, 2)).astype(np.float32), 'occluded': np.eye(n, t, dtype=bool)}


def _container(fmt: str, entry) -> object:
  return [entry] if fmt == 'rgb_stacking' else {'clip': entry}


def _pickle_paths(root: pathlib.Path, fmt: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(the path the reader is given, the file it reads)."""
  if fmt == 'kinetics':
    return root / 'shards', root / 'shards' / 'part_0000_of_0010.pkl'
  return root / 'data.pkl', root / 'data.pkl'


def _read_tapvid(fmt, path, resolution=None, **kwargs) -> list[tapvid.TapVidExample]:
  examples = list(tapvid.open_dataset(fmt, path, 'first', resolution, **kwargs))
  for e in examples:
    q, t = e.occluded.shape
    assert e.video.dtype == np.uint8 and e.video.shape[0] == t and e.video.shape[-1] == 3
    assert e.query_points.shape == (q, 3) and e.target_points.shape == (q, t, 2)
    assert np.isfinite(e.query_points).all() and np.isfinite(e.target_points).all()
  return examples


@functools.cache
def _valid_pickle(fmt: str, protocol: int) -> bytes:
  return pickle.dumps(_container(fmt, _arrays()), protocol=protocol)


@SLOW
@given(fmt=st.sampled_from(PICKLE_FORMATS), protocol=st.sampled_from([2, 5]), data=st.data())
def test_tapvid_pickles_damaged(fmt, protocol, data):
  blob = data.draw(st.one_of(damaged(_valid_pickle(fmt, protocol)), garbage(b'\x80\x02', b'\x80\x05')))
  with scratch() as d:
    given_path, file = _pickle_paths(pathlib.Path(d), fmt)
    write(file, blob)
    outcome(lambda: _read_tapvid(fmt, given_path), pathlib.Path(d), file)


@FAST
@given(fmt=st.sampled_from(PICKLE_FORMATS), key=st.sampled_from(['video', 'points', 'occluded', None]),
       value=WRONG_VALUES, drop=st.booleans(), whole=st.sampled_from(['entry', 'container', None]))
@example(fmt='kinetics', key='video', value=np.array(0), drop=False, whole=None)  # was a TypeError
def test_tapvid_pickles_wrong_structure(fmt, key, value, drop, whole):
  """One array replaced by `value` (or dropped), or the whole entry / container replaced by `value`."""
  entry = _arrays()
  if key is not None and drop:
    del entry[key]
  elif key is not None:
    entry[key] = value
  content = {'entry': _container(fmt, value), 'container': value, None: _container(fmt, entry)}[whole]
  with scratch() as d:
    given_path, file = _pickle_paths(pathlib.Path(d), fmt)
    write(file, pickle.dumps(content))
    result = outcome(lambda: _read_tapvid(fmt, given_path), pathlib.Path(d), file)
    if key is None and whole is None:
      assert result, 'the valid file did not read'
    else:  # only an array of the right kind, or an empty container, may read
      assert result is None or result == [] or (whole is None and not drop and isinstance(value, np.ndarray))


@FAST
@given(n=st.integers(0, 3), t=st.integers(0, 3), h=st.integers(0, 3), w=st.integers(0, 3),
       points=st.floats(allow_nan=True, allow_infinity=True, width=32), occluded=st.booleans(),
       resolution=st.sampled_from([None, (4, 6)]), mode=st.sampled_from(['first', 'strided']))
@example(n=0, t=0, h=0, w=0, points=0.0, occluded=False, resolution=None, mode='first')  # was an argmax error
def test_tapvid_edge_sizes_and_values(n, t, h, w, points, occluded, resolution, mode):
  """Consistent shapes with empty axes and any coordinate value."""
  entry = {'video': np.zeros((t, h, w, 3), np.uint8), 'points': np.full((n, t, 2), points, np.float32),
           'occluded': np.full((n, t), occluded)}
  with scratch() as d:
    path = write(pathlib.Path(d) / 'clip.pkl', pickle.dumps({'clip': entry}))
    outcome(lambda: list(tapvid.read_davis(path, mode, resolution)), pathlib.Path(d), path)


@functools.cache
def _jpeg() -> bytes:
  return to_bytes(lambda f: Image.fromarray(_arrays()['video'][0]).save(f, format='JPEG'))


@SLOW
@given(bad=st.deferred(lambda: damaged(_jpeg()) | garbage(b'\xff\xd8\xff')), frames=st.integers(1, 3))
def test_kinetics_jpeg_frames_damaged(bad, frames):
  entry = dict(_arrays(t=frames), video=[_jpeg()] * (frames - 1) + [bad])
  with scratch() as d:
    given_path, file = _pickle_paths(pathlib.Path(d), 'kinetics')
    write(file, pickle.dumps([entry]))
    outcome(lambda: _read_tapvid('kinetics', given_path), pathlib.Path(d), file)


@functools.cache
def _valid_npz() -> bytes:
  with scratch() as d:
    path = pathlib.Path(d) / 'clip.npz'
    tapvid.write_npz_example(path, **_arrays())
    return path.read_bytes()


@SLOW
@given(blob=st.deferred(lambda: damaged(_valid_npz()) | garbage(b'PK\x03\x04', b'\x93NUMPY')),
       as_dir=st.booleans())
@example(blob=b'PK\x03\x04', as_dir=False)  # was zipfile.BadZipFile
def test_tapvid_npz_damaged(blob, as_dir):
  with scratch() as d:
    path = write(pathlib.Path(d) / 'clip.npz', blob)
    outcome(lambda: _read_tapvid('npz', pathlib.Path(d) if as_dir else path), pathlib.Path(d), path)


@FAST
@given(key=st.sampled_from(['video', 'points', 'occluded']), value=WRONG_VALUES, drop=st.booleans())
@example(key='video', value=None, drop=False)  # a pickled object array: the error did not name the file
def test_tapvid_npz_wrong_structure(key, value, drop):
  arrays = _arrays()
  if drop:
    del arrays[key]
  else:
    arrays[key] = value
  with scratch() as d:
    path = pathlib.Path(d) / 'clip.npz'
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})  # None, text: object / str arrays
    result = outcome(lambda: _read_tapvid('npz', path), pathlib.Path(d), path)
    assert result is None or (not drop and isinstance(value, np.ndarray))


CSV_CELLS = st.one_of(st.floats(width=32), st.integers(-2, 2), st.sampled_from(['', 'nan', 'x', '1e400', ' 0.5 ']),
                      st.text(max_size=3))


@FAST
@given(rows=st.lists(st.tuples(st.sampled_from(['a', 'b', '', 'a.mp4']), st.lists(CSV_CELLS, max_size=7)),
                     max_size=4),
       raw=st.none() | garbage(b'a,0.5,0.5,0\n'))
@example(rows=[], raw=b'\x80')  # was UnicodeDecodeError
@example(rows=[], raw=b'a,0.5,0.5,0\x00\n')  # was _csv.Error
def test_tapvid_csv_malformed(rows, raw):
  """Rows of any length and content, or raw bytes; no video exists, so at best a FileNotFoundError naming it."""
  with scratch() as d:
    root = pathlib.Path(d)
    (root / 'videos').mkdir()
    path = root / 'tracks.csv'
    if raw is None:
      with open(path, 'w', newline='') as f:
        csv.writer(f).writerows([[vid, *cells] for vid, cells in rows])
    else:
      path.write_bytes(raw)
    outcome(lambda: _read_tapvid('csv', path, video_dir=root / 'videos'), root, path, missing_ok=True)


@SLOW
@given(blob=st.deferred(lambda: damaged(valid_mp4()) | garbage()))
@example(blob=b'')  # was mediapy's RuntimeError
def test_tapvid_csv_video_damaged(blob):
  """A valid csv whose video is damaged: it reads, or a ValueError names the video."""
  with scratch() as d:
    root = pathlib.Path(d)
    (root / 'tracks.csv').write_text('clip,' + ','.join(['0.5,0.5,0'] * 3) + '\n')
    video = write(root / 'videos' / 'clip.mp4', blob)
    outcome(lambda: _read_tapvid('csv', root / 'tracks.csv', video_dir=root / 'videos'), root, video)


# ---------------------------------------------------------------------------------------------------------------
# JHMDB: split files, joint .mat files, frames.


def _write_jhmdb(root: pathlib.Path, pos_img=None) -> dict[str, pathlib.Path]:
  """One test video, two 8x10 frames; returns its split file, .mat file and a frame."""
  import scipy.io  # pylint: disable=g-import-not-at-top  (the `data` extra)
  files = {'split': root / 'splits' / 'walk_test_split1.txt',
           'mat': root / 'joint_positions' / 'walk' / 'a' / 'joint_positions.mat',
           'png': root / 'Rename_Images' / 'walk' / 'a' / '00002.png'}
  for p in files.values():
    p.parent.mkdir(parents=True, exist_ok=True)
  files['split'].write_text('a.avi 2\nb.avi 1\n')
  scipy.io.savemat(files['mat'], {'pos_img': np.full((2, jhmdb.NUM_JOINTS, 2), 5.0) if pos_img is None else pos_img})
  for name in ('00001.png', '00002.png'):
    Image.fromarray(np.full((8, 10, 3), 40, np.uint8)).save(files['png'].parent / name)
  return files


@functools.cache
def _jhmdb_bytes(which: str) -> bytes:
  with scratch() as d:
    return _write_jhmdb(pathlib.Path(d))[which].read_bytes()


JHMDB_DAMAGE = st.sampled_from(['split', 'mat', 'png']).flatmap(
    lambda which: st.tuples(st.just(which), damaged(_jhmdb_bytes(which)) | garbage()))


@SLOW
@given(case=JHMDB_DAMAGE)
@example(case=('split', b'\x80'))  # was UnicodeDecodeError
@example(case=('mat', b'MATLAB'))  # was scipy's ValueError without the path
@example(case=('png', b''))  # was PIL's UnidentifiedImageError
def test_jhmdb_files_damaged(case):
  which, blob = case
  with scratch() as d:
    root = pathlib.Path(d) / 'jhmdb'
    files = _write_jhmdb(root)
    write(files[which], blob)
    outcome(lambda: list(jhmdb.read_jhmdb(root, resolution=None)), pathlib.Path(d), files[which],
            missing_ok=which == 'split')  # a damaged split file may name a video that does not exist


@FAST
@given(pos_img=st.one_of(
    hnp.arrays(st.sampled_from([np.float64, np.int16, np.uint8, np.complex128]),
               hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=16)),
    st.text(max_size=4), st.just({'x': 1.0})))
@example(pos_img={'x': 1.0})  # a struct: was a bare 'setting an array element with a sequence'
@example(pos_img=np.zeros((2, jhmdb.NUM_JOINTS, 0)))  # no frames: was np.stack's error
def test_jhmdb_wrong_joints(pos_img):
  with scratch() as d:
    root = pathlib.Path(d) / 'jhmdb'
    files = _write_jhmdb(root, pos_img)
    result = outcome(lambda: list(jhmdb.read_jhmdb(root, resolution=None)), pathlib.Path(d), files['mat'])
    shape = np.shape(pos_img)
    assert result is None or (len(shape) == 3 and shape[:2] == (2, jhmdb.NUM_JOINTS) and shape[2] >= 1)


def test_jhmdb_frames_of_different_sizes():
  with scratch() as d:
    root = pathlib.Path(d) / 'jhmdb'
    files = _write_jhmdb(root)
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(files['png'])
    fails(lambda: list(jhmdb.read_jhmdb(root, resolution=None)), pathlib.Path(d), files['png'])
