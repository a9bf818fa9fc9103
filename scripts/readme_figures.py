r"""Regenerates the README's figures from a finished CPU training run (`configs/tapir.py:cpu`).

    python -m experiments.train --config configs/tapir.py:cpu --workdir /tmp/tapir_cpu
    python scripts/readme_figures.py --workdir /tmp/tapir_cpu --out docs

Writes, under --out:
  loss_curve.png       training loss (total and per term) and the synthetic-set AJ from the run's history;
  synthetic_clip.png   a held-out built-in scene with its ground-truth tracks (frames 0, t/3, 2t/3, t-1);
  tracked_frame.png    the trained checkpoint on that scene at 256x256 (the model runs at 64x64): prediction
                       left, ground truth right, one frame;
  scene_kinds.png      frame 0 of the same seed as a 'procedural' and a 'photographic' built-in scene, and of a
                       held-out real-image clip (`tapir.data.realpix`);
  realpix_tracked.png  the trained checkpoint on that real-image clip (frames 0, 8, 16, 23): prediction above,
                       ground truth below.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tapir.data import realpix  # pylint: disable=g-import-not-at-top,wrong-import-position
from tapir.data import streams  # pylint: disable=g-import-not-at-top,wrong-import-position
from tapir.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
import tapir  # pylint: disable=g-import-not-at-top,wrong-import-position
from tapir.tracking import paint  # pylint: disable=g-import-not-at-top,wrong-import-position


def loss_curve(history_path: str, eval_path: str | None, out: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [json.loads(line) for line in open(history_path)]
  steps = [r['step'] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  axes[0].plot(steps, [r['loss'] for r in rows], label='total', color='k')
  axes[0].plot(steps, [r['position_loss'] * 0.05 for r in rows], label='0.05 x position (Huber)')
  axes[0].plot(steps, [r['occlusion_loss'] for r in rows], label='occlusion (BCE)')
  axes[0].plot(steps, [r['uncertainty_loss'] for r in rows], label='uncertainty (BCE)')
  axes[0].set_yscale('log')
  axes[0].set_xlabel('step')
  axes[0].set_title('training loss (configs/tapir.py:cpu)')
  axes[0].legend(fontsize=8)
  if eval_path and os.path.exists(eval_path):
    evals = [json.loads(line) for line in open(eval_path)]
    axes[1].plot([e['step'] for e in evals], [e['average_jaccard'] for e in evals], 'o-', label='trained model')
    axes[1].axhline(evals[0]['baseline_average_jaccard'], color='gray', ls='--', label='zero-motion baseline')
    axes[1].set_xlabel('step')
    axes[1].set_ylim(0, 1)
    axes[1].set_title('Average Jaccard, 20 held-out scenes (strided)')
    axes[1].legend(fontsize=8)
  else:
    axes[1].axis('off')
  fig.tight_layout()
  fig.savefig(out, dpi=110)


def scene_figures(checkpoint: str | None, out_dir: str, seed: int = 3) -> None:
  scenes = synthetic.SceneConfig(height=256, width=256, num_frames=24)  # the default kind: photographic
  examples = list(streams.synthetic_evaluation_set(seed + 1, 'first', scenes, tracks=48))
  example = examples[seed]
  t = example.video.shape[0]
  frames = [0, t // 3, 2 * t // 3, t - 1]
  gt_visible = ~example.occluded
  colors = paint.rainbow_colors(example.query_points, example.video.shape[1:3])
  painted = paint.paint_tracks(example.video, example.target_points, gt_visible, colors, trail=6, radius=3)
  sheet = paint.contact_sheet(painted[frames], columns=4, labels=[f'frame {f}' for f in frames])
  paint.save_image(os.path.join(out_dir, 'synthetic_clip.png'), sheet)
  if checkpoint:
    tracker = tapir.load_tracker(checkpoint)  # the architecture stored by the trainer
    result = tracker.predict(example.video, example.query_points, resize_to=tracker.resolution)
    both = paint.compare_tracks(example.video, result.tracks, result.visible, example.target_points, gt_visible,
                              colors=colors, trail=6, radius=3)
    paint.save_image(os.path.join(out_dir, 'tracked_frame.png'), both[frames[2]])


def kind_figures(checkpoint: str | None, out_dir: str, seed: int = 3) -> None:
  frames = []
  for kind in ('procedural', 'photographic'):
    scenes = synthetic.SceneConfig.of_kind(kind, height=256, width=256, num_frames=1)
    frames.append(synthetic.generate_scene(seed, scenes)['video'][0])
  example = list(realpix.evaluation_examples(seed + 1, 'first', realpix.RealPixConfig(tracks=48)))[seed]
  frames.append(example.video[0])
  sheet = paint.contact_sheet(np.stack(frames), columns=3, labels=['procedural', 'photographic', 'realpix'])
  paint.save_image(os.path.join(out_dir, 'scene_kinds.png'), sheet)
  if checkpoint:
    tracker = tapir.load_tracker(checkpoint)
    result = tracker.predict(example.video, example.query_points, resize_to=tracker.resolution)
    colors = paint.rainbow_colors(example.query_points, example.video.shape[1:3])
    shown = [0, 8, 16, 23]
    predicted = paint.paint_tracks(example.video, result.tracks, result.visible, colors, trail=6, radius=3)
    truth = paint.paint_tracks(example.video, example.target_points, ~example.occluded, colors, trail=6, radius=3)
    sheet = paint.contact_sheet(np.concatenate([predicted[shown], truth[shown]]), columns=4,
                                labels=[f'predicted, frame {f}' for f in shown] + [f'truth, frame {f}' for f in shown])
    paint.save_image(os.path.join(out_dir, 'realpix_tracked.png'), sheet)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='work directory of a configs/tapir.py:cpu run')
  parser.add_argument('--out', default='docs')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  loss_curve(os.path.join(args.workdir, 'train_history.json'), os.path.join(args.workdir, 'eval_history.json'),
             os.path.join(args.out, 'loss_curve.png'))
  checkpoint = os.path.join(args.workdir, 'tapir_checkpoint.npz')
  scene_figures(checkpoint if os.path.exists(checkpoint) else None, args.out)
  kind_figures(checkpoint if os.path.exists(checkpoint) else None, args.out)
  print(f'wrote figures to {args.out}')


if __name__ == '__main__':
  main()
