r"""Serve a web page to try the tracker: upload a video (or take the built-in clip), click points, track.

    pip install -e '.[demo]'
    python -m experiments.webapp                                   # http://127.0.0.1:7860
    python -m experiments.webapp --port 8080 --checkpoint_dir checkpoints --max_upload_mb 100
    python -m experiments.webapp --random_weights --model_overrides '{"num_mixer_blocks": 1}'   # no download

The page offers every checkpoint file in --checkpoint_dir (get the released ones with
`bash scripts/download_checkpoints.sh checkpoints`), plus untrained "random weights (demo)" with --random_weights
or when there are none. It listens on --host (127.0.0.1: this machine only); --share asks Gradio for a public
link. The work happens in `tapir.tracking.webapp`.
"""

import sys

from absl import app
from absl import flags

from tapir.tracking import cli
from tapir.tracking import webapp

_PORT = flags.DEFINE_integer('port', None, 'port to listen on (default: the first free one from 7860)')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'address to listen on; 0.0.0.0 for every interface')
_SHARE = flags.DEFINE_bool('share', False, 'also serve through a public Gradio share link')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', 'checkpoints', 'folder whose checkpoint files are offered')
_RANDOM = flags.DEFINE_bool('random_weights', False, 'also offer untrained weights (meaningless tracks; for trying '
                            'the page); offered anyway when --checkpoint_dir has no checkpoint')
_OVERRIDES = flags.DEFINE_string('model_overrides', None,
                                 'JSON object of TAPIR arguments on top of the preset, e.g. {"num_mixer_blocks": 1}')
_MAX_UPLOAD_MB = flags.DEFINE_float('max_upload_mb', webapp.Limits.max_upload_mb, 'largest upload, in MB')
_MAX_FRAMES = flags.DEFINE_integer('max_frames', webapp.Limits.max_frames, 'most frames in a video')
_MAX_SIDE = flags.DEFINE_integer('max_side', webapp.Limits.max_side, 'most pixels on the longer side of a frame')
_MAX_POINTS = flags.DEFINE_integer('max_points', webapp.Limits.max_points, 'most query points per run')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    limits = webapp.Limits(max_upload_mb=_MAX_UPLOAD_MB.value, max_frames=_MAX_FRAMES.value,
                           max_side=_MAX_SIDE.value, max_points=_MAX_POINTS.value)
    demo = webapp.build_app(_CHECKPOINT_DIR.value, limits=limits, random_weights=_RANDOM.value,
                            model_overrides=cli.parse_model_overrides(_OVERRIDES.value))
  except ImportError as e:
    sys.exit(f'error: {e} (the page needs Gradio: pip install -e ".[demo]")')
  except ValueError as e:
    sys.exit(f'error: {e}')
  webapp.serve(demo, host=_HOST.value, port=_PORT.value, share=_SHARE.value)


if __name__ == '__main__':
  app.run(main)
