"""Config-driven evaluation (`experiments/evaluate.py`): predictors x datasets x query modes -> files and tables.

Outputs in the workdir, per predictor and query mode: `<dataset>_<mode>_<predictor>.json` / `.csv` (per-video
metrics and the mean) and `results.md` / `results.tex` (one row per predictor and mode).
"""

import os
from typing import Any, Callable

from absl import logging

from tapir import checkpoint as checkpoint_lib
from tapir import config_fields
from tapir import metrics
from tapir.data import streams
from tapir.data import tapvid
from tapir.evaluation import loop as evaluation
from tapir.tracking import loader


def _overrides(config) -> dict[str, Any]:
  """`config.model_overrides` without the values equal to `tapir.TAPIR`'s defaults (the config's
  `initial_resolution=(256, 256)`): those request nothing, so they never contradict a checkpoint trained at
  another resolution, and they do not reach a TAP-Net, which has no such setting."""
  defaults = checkpoint_lib.tapir_defaults()
  return {k: v for k, v in checkpoint_lib.normalize_settings(config.model_overrides.to_dict()).items()
          if k not in defaults or v != defaults[k]}


def predictors(config) -> dict[str, Callable]:
  """The checkpoint's tracker (through `tapir.load_tracker`'s rule) and the baselines, by name."""
  out = {}
  resize_to = None if config.full_resolution else tuple(config.resolution_hw)
  if config.checkpoint:
    model = loader.load_weights(config.checkpoint, config.preset or None, **_overrides(config))
    tracker = loader.make_tracker(model, query_chunk_size=config.query_chunk_size)
    out['full_resolution' if config.full_resolution else model.family] = evaluation.tracker_predictor(
        tracker, resize_to)
  else:
    logging.warning('no --config.checkpoint given: scoring the baselines only')
  for name in config.baselines:
    if name != 'zero_motion':
      raise ValueError(f'unknown baseline {name!r}; available: zero_motion')
    out[name] = evaluation.zero_motion_predictor
  return out


def examples(config, query_mode: str):
  resolution = None if config.full_resolution else tuple(config.resolution_hw)
  if config.dataset == 'synthetic':
    from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
    s = config.synthetic
    scenes = synthetic.SceneConfig.of_kind(s.kind, height=s.hw[0], width=s.hw[1], num_frames=s.num_frames)
    return streams.synthetic_evaluation_set(s.num_videos, query_mode, scenes, s.tracks)
  if config.dataset == 'realpix':
    from tapir.data import realpix  # pylint: disable=g-import-not-at-top
    r = config.realpix
    clips = realpix.RealPixConfig(height=r.hw[0], width=r.hw[1], num_frames=r.num_frames, tracks=r.tracks)
    return realpix.evaluation_examples(r.num_videos, query_mode, clips)
  kwargs = dict(video_dir=config.video_dir) if config.dataset == 'csv' else {}
  if config.dataset == 'kubric':
    kwargs = dict(dataset=config.kubric.dataset, split=config.kubric.split, vflip=config.kubric.vflip,
                  seed=config.kubric.seed, num_videos=config.kubric.num_videos or None)
  return tapvid.open_dataset(config.dataset, config.path, query_mode, resolution=resolution, **kwargs)


def run(config, workdir: str) -> dict[str, evaluation.EvaluationResult]:
  """Evaluates every predictor on `config.dataset` in every query mode; writes files to `workdir`."""
  config_fields.reject_renamed(config, config_fields.EVALUATION_RENAMES)
  os.makedirs(workdir, exist_ok=True)
  if config.dataset == 'jhmdb':
    return run_jhmdb(config, workdir)
  results, table, notes = {}, {}, []
  for name, predict in predictors(config).items():
    for mode in config.query_modes:
      logging.info('evaluating %s on %s (%s)', name, config.dataset, mode)
      result = evaluation.evaluate(predict, examples(config, mode), mode)
      stem = os.path.join(workdir, f'{config.dataset}_{mode}_{name}')
      result.to_json(stem + '.json')
      result.to_csv(stem + '.csv')
      results[f'{name}/{mode}'] = result
      table[f'{config.dataset} {mode}: {name}'] = result.mean
      notes.append(result.skipped_note(f'{config.dataset} {mode}: {name}'))
  markdown = metrics.format_results_table(table, 'markdown')
  markdown += ''.join(f'\n\n{note}' for note in notes if note)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(workdir, 'results.tex'), 'w') as f:
    f.write(metrics.format_results_table(table, 'latex'))
  logging.info('results:\n%s', markdown)
  print(markdown)
  return results


def run_jhmdb(config, workdir: str) -> dict[str, evaluation.PckResult]:
  """JHMDB keypoint propagation (no query modes): `jhmdb_<predictor>.json` and PCK tables in `workdir`."""
  from tapir.data import jhmdb  # pylint: disable=g-import-not-at-top
  resolution = None if config.full_resolution else tuple(config.resolution_hw)
  results = {}
  for name, predict in predictors(config).items():
    logging.info('evaluating %s on jhmdb', name)
    results[name] = evaluation.evaluate_jhmdb(predict, jhmdb.read_jhmdb(config.path, resolution))
    results[name].to_json(os.path.join(workdir, f'jhmdb_{name}.json'))
  table = {f'jhmdb: {name}': r.mean for name, r in results.items()}
  markdown = metrics.format_pck_table(table, 'markdown')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(workdir, 'results.tex'), 'w') as f:
    f.write(metrics.format_pck_table(table, 'latex'))
  print(markdown)
  return results
