"""Track a corpus of videos, shared by many hosts: the library behind `experiments.track --videos GLOB --save_dir DIR`.

    summary = corpus.track_corpus('data/**/*.mp4', 'tracks', 'tapir_checkpoint_panning.npy', 'tapir', grid=16,
                                  shard=(0, 2))                    # this process's half of the corpus
    summary.done, summary.skipped, summary.failed                  # relative paths; failed: {path: reason}

Naming: `root` is the pattern's directory before its first wildcard ('data' above); each matching file `root/rel`
gets one tracks file `save_dir/rel.npz` (`a/clip.mp4` -> `a/clip.mp4.npz`: the relative path keeps same-named
videos in different folders apart, the kept extension `clip.mp4` from `clip.avi`). It holds what `--save` writes
(`cli.save_tracks`: tracks [n, t, 2] (x, y), visible [n, t], query_points [n, 3] (t, y, x), fps (float), and
the settings as strings, `video` the source path among them) plus `relative`; it is written atomically
(temporary file, fsync, rename), so a kill never leaves a partial file under the final name.

Sharding, with no coordinator: the matches are sorted by relative path and file k goes to shard k % n (by default
n = `jax.process_count()`, i = `jax.process_index()`). Shards are balanced to one file, and the rule ignores which
files are done, so every host must see the same list; a file added mid-run can only be done twice (harmless: the
writes are atomic) or wait for the next run. A file counts as done when its output loads and was made with the same
settings; a damaged output is redone (with a warning), one made with other settings fails (use another `save_dir`).
So a killed run, started again, resumes. Each shard writes `save_dir/summary-<i>-of-<n>.json`.

Memory: one video at a time, the model loaded once; offline, only the video resized to the model's input is held
(`cli.track_and_paint`), and at most `MAX_COMPILED_SHAPES` compiled video shapes are kept. A file that cannot be
read or tracked is reported with its reason and skipped; the rest go on.
"""

import dataclasses
import glob
import json
import os
import time
from typing import Any, NamedTuple, Sequence

from absl import logging
import jax
import numpy as np
import tqdm

from tapir import checkpoint_io
from tapir import video as video_io
from tapir.models import precision
from tapir.tracking import cli
from tapir.tracking import core
from tapir.tracking import loader
from tapir.tracking import online as online_lib
from tapir.tracking import queries as queries_lib

SUFFIX = '.npz'  # appended to the video's relative path
SUMMARY_NAME = 'summary-{index}-of-{count}.json'
EXIT_SOME_FAILED = 3  # exit status of the runner when some videos failed (all others were still tracked)
TRACK_ARRAYS = ('tracks', 'visible', 'query_points')
# Each video shape compiles the model once (`tapir.tracking.core`); past this many, the compiled code is dropped, so
# a corpus of many lengths does not accumulate executables (a recompilation costs seconds, not memory).
MAX_COMPILED_SHAPES = 16
_COMPARED = ('preset', 'checkpoint', 'online', 'resize', 'queries')  # settings a done file must share with this run


class CorpusItem(NamedTuple):
  """One video of the corpus and where its tracks go."""
  path: str  # the file, as the pattern matched it
  relative: str  # its path below the pattern's root, '/'-separated: the key of the shard rule and summaries
  output: str  # save_dir/relative.npz


@dataclasses.dataclass
class CorpusSummary:
  """What one shard's run did; `failed` maps relative paths to the reason."""
  shard: tuple[int, int]  # (index, count)
  total: int = 0  # videos in this shard
  done: list[str] = dataclasses.field(default_factory=list)  # tracked by this run
  skipped: list[str] = dataclasses.field(default_factory=list)  # already done by an earlier run
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0

  def report(self) -> str:
    """Counts, then one line per failed file with its reason."""
    index, count = self.shard
    lines = [f'shard {index}/{count}: {self.total} videos: {len(self.done)} done, {len(self.skipped)} already done '
             f'(skipped), {len(self.failed)} failed, in {self.seconds:.1f} s']
    lines += [f'  failed {path}: {reason}' for path, reason in self.failed.items()]
    return '\n'.join(lines)


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' -> (i, n), with 0 <= i < n; else ValueError naming `shard`."""
  try:
    index, count = (int(part) for part in str(text).split('/'))
  except ValueError:
    raise ValueError(f'shard must be "i/n" with integers 0 <= i < n, e.g. 0/4; got {text!r}') from None
  return check_shard(index, count)


def check_shard(index: Any, count: Any) -> tuple[int, int]:
  """(index, count) as ints with 0 <= index < count; else ValueError naming `shard`."""
  if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (index, count)):
    raise ValueError(f'shard must be two integers (index, count); got {(index, count)!r}')
  if count < 1 or not 0 <= index < count:
    raise ValueError(f'shard index must be in 0..count-1 with count >= 1; got {index}/{count}')
  return int(index), int(count)


def default_shard() -> tuple[int, int]:
  """(jax.process_index(), jax.process_count()): one shard per host of a multi-host JAX run."""
  return jax.process_index(), jax.process_count()


def take_shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
  """The `index`-th of `count` shards of the sorted `items`: item k belongs to shard k % count."""
  index, count = check_shard(index, count)
  if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
    raise ValueError(f'items must be a sequence (the sorted corpus); got {type(items).__name__}')
  return list(items)[index::count]


def pattern_root(pattern: str) -> str:
  """The directory of `pattern` before its first wildcard ('' for the current one): outputs mirror the tree below."""
  if not isinstance(pattern, str) or not pattern:
    raise ValueError(f'videos must be a non-empty glob pattern; got {pattern!r}')
  head = pattern
  while glob.has_magic(head):
    head = os.path.dirname(head)
  return os.path.dirname(pattern) if head == pattern else head


def output_path(save_dir: str, relative: str) -> str:
  """Where the tracks of the video at `relative` (below the pattern's root) go: `save_dir/relative.npz`."""
  for name, value in (('save_dir', save_dir), ('relative', relative)):
    if not isinstance(value, str) or not value:
      raise ValueError(f'{name} must be a non-empty path; got {value!r}')
  if relative.startswith('/') or '..' in relative.split('/'):
    raise ValueError(f'relative must be a path below the corpus root; got {relative!r}')
  return os.path.join(save_dir, *relative.split('/')) + SUFFIX


def list_corpus(pattern: str, save_dir: str) -> list[CorpusItem]:
  """The files matching `pattern` (`**` recurses), sorted by relative path; files under `save_dir` are left out.

  Raises ValueError when nothing matches (a mistyped pattern must not look like an empty, finished corpus).
  """
  if not isinstance(save_dir, str) or not save_dir:
    raise ValueError(f'save_dir must be a non-empty path; got {save_dir!r}')
  pattern = os.path.expanduser(pattern) if isinstance(pattern, str) else pattern
  root = pattern_root(pattern)
  outputs = os.path.abspath(save_dir) + os.sep
  items = {}
  for path in glob.glob(pattern, recursive=True):
    if not os.path.isfile(path) or os.path.abspath(path).startswith(outputs):
      continue
    relative = os.path.relpath(path, root or os.curdir)
    if relative.startswith(os.pardir):
      raise ValueError(f'videos: {path} lies outside {root or os.curdir!r}, the root of pattern {pattern!r}')
    relative = relative.replace(os.sep, '/')
    items[relative] = CorpusItem(path, relative, output_path(save_dir, relative))
  if not items:
    raise ValueError(f'videos: no files match {pattern!r}')
  return [items[k] for k in sorted(items)]


def write_tracks(path: str, result: cli.TrackResult, **settings: Any) -> None:
  """Writes the `--save` fields (`cli.save_tracks`: fps among them) to the `.npz` at `path`, atomically.

  `result`: tracks [n, t, 2] (x, y), visible [n, t], query_points [n, 3] (t, y, x); `settings` become strings.
  """
  n, t = np.shape(result.visible) if np.ndim(result.visible) == 2 else (-1, -1)
  if n < 0 or np.shape(result.tracks) != (n, t, 2) or np.shape(result.query_points) != (n, 3):
    raise ValueError(f'result must hold tracks [n, t, 2], visible [n, t] and query_points [n, 3]; got shapes '
                     f'{np.shape(result.tracks)}, {np.shape(result.visible)}, {np.shape(result.query_points)}')
  cli.save_tracks(path, result, **settings)


def _comparable(key: str, value: Any) -> str:
  value = str(value)
  return os.path.basename(value) if key == 'checkpoint' else value  # hosts may mount the weights elsewhere


def is_done(path: str, settings: dict[str, Any]) -> bool:
  """Whether `path` holds complete tracks made with `settings`; a missing or damaged file (warned) is not done.

  Raises ValueError when it is complete but was made with other settings (this run would mix two kinds of tracks).
  """
  if not isinstance(settings, dict):
    raise ValueError(f'settings must be a dict of the settings this run records; got {settings!r}')
  if not os.path.exists(path):
    return False
  try:
    with np.load(path) as saved:
      stored = {k: saved[k] for k in saved.files}  # reads every entry: a truncated file fails here
    missing = [k for k in TRACK_ARRAYS if k not in stored]
    if missing:
      raise ValueError(f'no {", ".join(missing)}')
  except Exception as e:  # pylint: disable=broad-except  (zip, zlib, numpy and OS errors all mean: redo it)
    logging.warning('%s is damaged (%s: %s): tracking its video again', path, type(e).__name__, e)
    return False
  differ = {k: (str(stored[k]) if k in stored else None, settings[k]) for k in _COMPARED
            if k in settings and (k not in stored or _comparable(k, stored[k]) != _comparable(k, settings[k]))}
  if differ:
    described = ', '.join(f'{k} {old!r} here, {new!r} now' for k, (old, new) in differ.items())
    raise ValueError(f'{path} was made with other settings ({described}): use another save_dir, or delete it')
  return True


def failure_reason(error: Exception) -> str:
  """One line for a summary: the message's first line (without ffmpeg's banner) and its last, which names the cause."""
  if not isinstance(error, Exception):
    raise ValueError(f'error must be an exception; got {error!r}')
  lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ['']
  first = lines[0].split(' ffmpeg version ')[0].rstrip(' :')
  reason = first if len(lines) == 1 else f'{first} ... {lines[-1]}'
  return reason if isinstance(error, ValueError) else f'{type(error).__name__}: {reason}'


def _queries_setting(grid: int | None, points: str | None, mask: str | None, mask_frame: int) -> str:
  """Checks what can be checked without a video (exactly one source, the points' syntax, the mask file)."""
  if sum(x is not None for x in (grid, points, mask)) != 1:
    raise ValueError('give exactly one of --grid, --points and --mask')
  if grid is not None:
    return f'grid {queries_lib.check_positive_int(grid, "grid")}'
  if points is not None:
    queries_lib.parse_points(points)
    return f'points {points}'
  if not os.path.isfile(mask):
    raise ValueError(f'mask not found: {mask}')
  return f'mask {os.path.basename(mask)} frame {mask_frame}'


def write_summary(save_dir: str, summary: CorpusSummary, **extra: Any) -> str:
  """`save_dir/summary-<i>-of-<n>.json` (atomically): the summary's fields and `extra`; returns its path."""
  if not isinstance(summary, CorpusSummary):
    raise ValueError(f'summary must be a CorpusSummary; got {type(summary).__name__}')
  index, count = summary.shard
  path = os.path.join(save_dir, SUMMARY_NAME.format(index=index, count=count))
  contents = json.dumps({**dataclasses.asdict(summary), **extra}, indent=1).encode('utf-8')
  checkpoint_io.write_atomically(path, lambda f: f.write(contents))
  return path


def track_corpus(pattern: str, save_dir: str, checkpoint: str | None = None, preset: str | None = None, *,
                 shard: tuple[int, int] | None = None, grid: int | None = None, points: str | None = None,
                 mask: str | None = None, mask_frame: int = 0, online: bool = False, resize: int | None = None,
                 query_chunk_size: int = 64, random_weights: bool = False, model_overrides: str | None = None,
                 progress: bool = True, dtype: str = 'float32') -> CorpusSummary:
  """Tracks this shard's videos of `pattern` into `save_dir` (module docstring), skipping those already done.

  Arguments mirror `cli.track_file` (the queries are made per video, in its pixels); `shard` (index, count)
  defaults to `default_shard()`. Everything that can be checked is checked, and the model loaded once, before
  the first video. A video that fails is reported in the returned summary (and `summary-<i>-of-<n>.json`) and
  does not stop the rest; KeyboardInterrupt does (what is written stays written).
  """
  if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 0):
    raise ValueError(f'resize must be an integer >= 1, or 0 for the video\'s own size; got {resize!r}')
  queries_lib.check_positive_int(query_chunk_size, 'query_chunk_size')
  precision.check_compute_dtype(dtype)
  queries = _queries_setting(grid, points, mask, mask_frame)
  index, count = default_shard() if shard is None else check_shard(*shard)
  items = take_shard(list_corpus(pattern, save_dir), index, count)
  model = loader.load_weights(checkpoint, preset, random_weights=random_weights,
                              **cli.parse_model_overrides(model_overrides))
  resize_to = core.MODEL_RESOLUTION if resize is None else (resize, resize) if resize else None
  tracker = loader.make_tracker(model, online, resize_to, query_chunk_size, dtype)
  if online:  # as `cli.track_file` does, so a corpus file equals what `--video X --save` writes
    resize_to = tracker.resize_to
  elif resize is None:
    resize_to = tracker.resolution
  settings = dict(**loader.describe(model), online=online, queries=queries,
                  resize='x'.join(map(str, resize_to)) if resize_to else 'native')
  summary = CorpusSummary(shard=(index, count), total=len(items))
  logging.info('shard %d/%d: %d videos of %s -> %s', index, count, len(items), pattern, save_dir)
  start, compiled = time.perf_counter(), set()
  bar = tqdm.tqdm(items, desc=f'videos (shard {index}/{count})', unit='video', disable=not progress)
  for item in bar:
    try:
      if is_done(item.output, settings):
        summary.skipped.append(item.relative)
      else:
        _track_one(tracker, item, query_args=dict(grid=grid, points=points, mask=mask, mask_frame=mask_frame),
                   resize_to=resize_to, settings=settings, compiled=compiled)
        summary.done.append(item.relative)
    except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop the corpus)
      summary.failed[item.relative] = failure_reason(e)
      logging.warning('failed %s: %s', item.path, summary.failed[item.relative],
                      exc_info=not isinstance(e, ValueError))  # a traceback where the cause may be a bug
      if summary.failed[item.relative] != str(e):
        logging.info('the whole message: %s', e)
    bar.set_postfix(done=len(summary.done), skipped=len(summary.skipped), failed=len(summary.failed))
  summary.seconds = time.perf_counter() - start
  path = write_summary(save_dir, summary, pattern=pattern, settings={k: str(v) for k, v in settings.items()})
  logging.info('%s\nwrote %s', summary.report(), path)
  return summary


def _track_one(tracker: loader.AnyTracker, item: CorpusItem, query_args: dict[str, Any],
               resize_to: Sequence[int] | None, settings: dict[str, Any], compiled: set) -> None:
  """Tracks one video and writes its tracks; nothing of the video outlives the call."""
  info = video_io.probe(item.path)
  query_points = queries_lib.make_query_points((info.num_frames, info.height, info.width, 3), **query_args)
  model_hw = tuple(resize_to or (info.height, info.width))
  online = isinstance(tracker, online_lib.OnlineTracker)
  shape = model_hw if online else (info.num_frames, *model_hw)  # what the tracker compiles for
  compiled.add(shape)
  if len(compiled) > MAX_COMPILED_SHAPES:
    logging.info('%d video shapes compiled: dropping the compiled code', len(compiled) - 1)
    jax.clear_caches()
    compiled.clear()
    compiled.add(shape)
  tracks, visible = cli.track_and_paint(tracker, item.path, None, query_points, resize_to, progress=False, info=info)
  write_tracks(item.output, cli.TrackResult(tracks, visible, query_points, info.fps), **settings, video=item.path,
               relative=item.relative)
  logging.info('wrote %s (%d points, %d frames)', item.output, *tracks.shape[:2])
