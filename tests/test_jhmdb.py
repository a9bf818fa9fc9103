"""JHMDB keypoint propagation: the reader on a tiny dataset in the official layout, PCK by hand, the runner."""

import json

import ml_collections
import numpy as np
from PIL import Image
import pytest

from tapir.evaluation import runner as eval_runner
from tapir.evaluation import loop as evaluation
from tapir import metrics
from tapir.data import jhmdb

scipy_io = pytest.importorskip('scipy.io')
H, W, T = 40, 60, 3


def _joints(seed):
  """[15, T, 2] (x, y) pixels: joints 0-13 inside a 40x60 frame, joint 14 outside at frame 0."""
  rng = np.random.default_rng(seed)
  joints = np.stack([rng.uniform(5, W - 5, (15, T)), rng.uniform(5, H - 5, (15, T))], -1)
  joints[14, 0] = (W + 3, 10)  # outside at frame 0: invalid for the whole clip
  return joints


def _write_dataset(root):
  """Two classes; split 1 test videos: walk/a, run/c (b is a training video)."""
  (root / 'splits').mkdir(parents=True)
  (root / 'splits' / 'walk_test_split1.txt').write_text('a.avi 2\nb.avi 1\n')
  (root / 'splits' / 'run_test_split1.txt').write_text('c.avi 2\n')
  for seed, (action, name) in enumerate([('walk', 'a'), ('walk', 'b'), ('run', 'c')]):
    joints_dir = root / 'joint_positions' / action / name
    frames_dir = root / 'Rename_Images' / action / name
    joints_dir.mkdir(parents=True)
    frames_dir.mkdir(parents=True)
    scipy_io.savemat(joints_dir / 'joint_positions.mat', {'pos_img': np.transpose(_joints(seed), (2, 0, 1))})
    for f in range(T + 1):  # one frame more than the poses: truncated
      Image.fromarray(np.full((H, W, 3), 40 * f, np.uint8)).save(frames_dir / f'{f + 1:05d}.png')
  return root


def test_reader_layout_validity_and_queries(tmp_path):
  root = _write_dataset(tmp_path / 'jhmdb')
  videos = list(jhmdb.read_jhmdb(root, resolution=(32, 32)))
  assert [v.video_name for v in videos] == ['run/c', 'walk/a']  # classes sorted, test videos only
  walk = videos[1]
  assert walk.video.shape == (T, 32, 32, 3) and walk.image_hw == (H, W)
  np.testing.assert_allclose(walk.joints, _joints(0), atol=1e-4)
  assert walk.valid.tolist() == [True] * 14 + [False]
  want = _joints(0)[:14, 0]
  np.testing.assert_allclose(walk.query_points, np.stack([np.zeros(14), want[:, 1] * 32 / H,
                                                          want[:, 0] * 32 / W], -1), atol=1e-4)


def test_pck_by_hand():
  """Two valid joints 6 x 8 px apart: normaliser 0.6 * 10 = 6 px; errors of 0.5, 1.5 and 3 px."""
  gt = np.zeros((3, 2, 2))
  gt[0, :] = (10, 20)
  gt[1, :] = (16, 28)
  gt[2, :] = (500, 500)  # invalid: ignored, also for the extent
  pred = gt.copy()
  pred[0, 0] += (0.5, 0)  # ratio 0.5 / 6 = 0.083 -> correct at every alpha
  pred[0, 1] += (0, 1.5)  # 0.25 -> correct at 0.3, 0.4, 0.5
  pred[1, 0] += (3, 0)  # 0.5 -> correct at 0.5 only (non-strict)
  pred[1, 1] += (0, 1.2)  # 0.2 -> correct at 0.2 and above (non-strict: 1.2 / 6 = 0.2)
  acc = metrics.PckAccumulator(num_joints=3)
  acc.add(pred, gt, np.array([True, True, False]))
  # Per joint (%): joint 0 [50, 50, 100, 100, 100], joint 1 [0, 50, 50, 50, 100], joint 2 never evaluated: 0.
  np.testing.assert_allclose(acc.per_joint(), [[50, 0, 0], [50, 50, 0], [100, 50, 0], [100, 50, 0],
                                                 [100, 100, 0]], atol=1e-9)
  mean = acc.mean()
  assert list(mean) == ['pck@0.1', 'pck@0.2', 'pck@0.3', 'pck@0.4', 'pck@0.5']
  np.testing.assert_allclose(list(mean.values()), [50 / 3, 100 / 3, 50, 50, 200 / 3])
  with pytest.raises(ValueError, match='valid'):
    acc.add(pred, gt, np.array([True, False]))
  assert metrics.format_pck_table({'x': mean}).splitlines()[2] == '| x | 16.7 | 33.3 | 50.0 | 50.0 | 66.7 |'


def test_evaluate_and_runner_on_jhmdb(tmp_path):
  root = _write_dataset(tmp_path / 'jhmdb')
  result = evaluation.evaluate_jhmdb(evaluation.zero_motion_predictor, jhmdb.read_jhmdb(root), progress=False)
  # Zero motion, scored by hand on the original poses: the frame-0 joints predicted in every frame.
  acc = metrics.PckAccumulator()
  for seed in (2, 0):
    joints = _joints(seed)
    valid = np.arange(15) < 14
    acc.add(np.repeat(joints[:, :1], T, axis=1), joints, valid)
  for key, value in acc.mean().items():
    assert result.mean[key] == pytest.approx(value, abs=1e-3)
  assert result.mean['pck@0.5'] > result.mean['pck@0.1'] > 0

  config = ml_collections.ConfigDict(dict(
      checkpoint='', preset='tapir', dataset='jhmdb', path=str(root), query_modes=('first',), resolution_hw=(32, 32),
      full_resolution=False, query_chunk_size=8, baselines=('zero_motion',)))
  eval_runner.run(config, str(tmp_path / 'out'))
  saved = json.loads((tmp_path / 'out' / 'jhmdb_zero_motion.json').read_text())
  assert saved['num_videos'] == 2 and set(saved['mean']) == set(metrics.PCK_KEYS)
  assert 'PCK@0.1' in (tmp_path / 'out' / 'results.md').read_text()
