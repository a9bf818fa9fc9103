r"""Track points through a video and write it with the tracks painted on.

    python -m experiments.track --video in.mp4 --checkpoint checkpoints/tapir_checkpoint_panning.npy \
        --grid 16 --out out.mp4 --save tracks.npz
    python -m experiments.track --video in.mp4 --checkpoint checkpoints/causal_tapir_checkpoint.npy \
        --preset causal_tapir --online --points "0,120.5,64.5;10,40,200" --out out.mp4
    python -m experiments.track --video in.mp4 --checkpoint ... --mask mask.png --mask_frame 0 --out out.mp4

    python -m experiments.track --videos 'data/**/*.mp4' --save_dir tracks --checkpoint ... --grid 16 \
        --shard 0/4     # on host 0 of 4 (default: jax.process_index()/jax.process_count())

Queries come from exactly one of --grid (N x N on frame 0), --points ("t,y,x;..." in the video's pixels) and
--mask (a grid inside the nonzero pixels of an image the size of a frame). Get the weights with
`bash scripts/download_checkpoints.sh checkpoints`. The work happens in `tapir.tracking.cli.track_file`.

--videos tracks every file of a glob (`**` recurses) into --save_dir/<path below the glob's root>.npz, each written
atomically, skipping files already done, so a killed run resumes; each process takes its shard of the sorted list
(file k to shard k % n) and writes --save_dir/summary-<i>-of-<n>.json. A file that fails is reported and the rest go
on; the exit status is then 3 (`tapir.tracking.corpus.EXIT_SOME_FAILED`), after every file was tried. The work
happens in `tapir.tracking.corpus.track_corpus`.
"""

import sys

from absl import app
from absl import flags

import tapir
from tapir.tracking import cli
from tapir.tracking import corpus
from tapir.tracking import loader

_VIDEO = flags.DEFINE_string('video', None, 'input video file (or --videos)')
_VIDEOS = flags.DEFINE_string('videos', None, 'glob of input videos ("**" recurses), tracked into --save_dir')
_SAVE_DIR = flags.DEFINE_string('save_dir', None, 'with --videos: one .npz per video (the --save fields, plus fps)')
_SHARD = flags.DEFINE_string('shard', None, 'with --videos: "i/n" to track the i-th of n shares of the sorted list; '
                             'default: jax.process_index()/jax.process_count()')
_OUT = flags.DEFINE_string('out', None, 'output video with the tracks painted on (input size and fps)')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'checkpoint: released .npy (scripts/download_checkpoints.sh) '
                                  'or one of ours')
_PRESET = flags.DEFINE_enum('preset', None, sorted(tapir.PRESETS),
                             'architecture of a released checkpoint (settings stored in the checkpoint win; a '
                             'contradicting preset is an error); needed unless the layout determines it; tapnet is the '
                             'TAP-Net baseline (offline only)')
_GRID = flags.DEFINE_integer('grid', None, 'track an N x N grid of points from frame 0')
_POINTS = flags.DEFINE_string('points', None, 'query points "t,y,x;t,y,x" (frame, row, column in pixels)')
_MASK = flags.DEFINE_string('mask', None, 'image the size of a frame; query a grid inside its nonzero pixels')
_MASK_FRAME = flags.DEFINE_integer('mask_frame', 0, 'frame the --mask belongs to')
_ONLINE = flags.DEFINE_bool('online', False, 'stream frame by frame with a causal model (causal presets)')
_RESIZE = flags.DEFINE_integer('resize', None, 'square size the model runs at; 0 = the video\'s own size; default: '
                               'the model\'s initial_resolution (256 for the released models)')
_SAVE = flags.DEFINE_string('save', None, '.npz for tracks [n, t, 2] (x, y), visible [n, t], query_points [n, 3]')
_CHUNK = flags.DEFINE_integer('query_chunk_size', 64, 'queries per model call (offline)')
_TRAIL = flags.DEFINE_integer('trail', 8, 'frames of fading trail behind each point')
_STYLE = flags.DEFINE_enum('style', 'trails', list(cli.STYLES), 'trails: fading trails in the image; rainbow: '
                           'camera-compensated trails (background motion removed; offline only)')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                            'compute precision of the convolutions and dense layers (bfloat16: for GPU / TPU)')
_RANDOM = flags.DEFINE_bool('random_weights', False, 'run untrained weights when no --checkpoint (testing only)')
_OVERRIDES = flags.DEFINE_string('model_overrides', None,
                                 'JSON object of TAPIR arguments on top of the preset, e.g. {"num_mixer_blocks": 1}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if (_VIDEO.value is None) == (_VIDEOS.value is None):
    raise app.UsageError('give --video (one file) or --videos (a glob of files, with --save_dir), '
                         + ('not both' if _VIDEO.value is not None else 'one of them'))
  if _VIDEOS.value is not None:
    return _track_corpus()
  if _SAVE_DIR.value is not None or _SHARD.value is not None:
    raise app.UsageError('--save_dir and --shard go with --videos; for one --video, use --out and/or --save')
  if not _OUT.value and not _SAVE.value:
    raise app.UsageError('nothing to write: pass --out and/or --save')
  if _CHECKPOINT.value is None and not _RANDOM.value:
    sys.exit(f'error: {loader.NEED_WEIGHTS} (flags: --checkpoint PATH, or --random_weights)')
  try:
    cli.track_file(
        _VIDEO.value, _OUT.value, _CHECKPOINT.value, _PRESET.value, grid=_GRID.value, points=_POINTS.value,
        mask=_MASK.value, mask_frame=_MASK_FRAME.value, online=_ONLINE.value, resize=_RESIZE.value,
        save_path=_SAVE.value, query_chunk_size=_CHUNK.value, random_weights=_RANDOM.value,
        model_overrides=_OVERRIDES.value, trail=_TRAIL.value, style=_STYLE.value, dtype=_DTYPE.value)
  except (ValueError, FileNotFoundError) as e:  # bad inputs: name the problem without a traceback
    sys.exit(f'error: {e}')


def _track_corpus():
  painting = [f'--{name}' for name in ('out', 'save', 'style', 'trail') if flags.FLAGS[name].present]
  if painting:
    raise app.UsageError(f'--videos writes only tracks, to --save_dir: {", ".join(painting)} go with one --video')
  if not _SAVE_DIR.value:
    raise app.UsageError('--videos needs --save_dir, the folder for the tracks files')
  if _CHECKPOINT.value is None and not _RANDOM.value:
    sys.exit(f'error: {loader.NEED_WEIGHTS} (flags: --checkpoint PATH, or --random_weights)')
  try:
    summary = corpus.track_corpus(
        _VIDEOS.value, _SAVE_DIR.value, _CHECKPOINT.value, _PRESET.value,
        shard=None if _SHARD.value is None else corpus.parse_shard(_SHARD.value), grid=_GRID.value,
        points=_POINTS.value, mask=_MASK.value, mask_frame=_MASK_FRAME.value, online=_ONLINE.value,
        resize=_RESIZE.value, query_chunk_size=_CHUNK.value, random_weights=_RANDOM.value,
        model_overrides=_OVERRIDES.value, dtype=_DTYPE.value)
  except (ValueError, FileNotFoundError) as e:  # bad inputs, before any video: name the problem
    sys.exit(f'error: {e}')
  print(summary.report())
  if summary.failed:
    sys.exit(corpus.EXIT_SOME_FAILED)


if __name__ == '__main__':
  app.run(main)
