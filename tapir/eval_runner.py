"""Config-driven evaluation (`experiments/evaluate.py`): predictors x datasets x query modes -> files and tables.

Outputs in the workdir, per predictor and query mode: `<dataset>_<mode>_<predictor>.json` / `.csv` (per-video
metrics and the mean) and `results.md` / `results.tex` (one row per predictor and mode).
"""

import os
from typing import Any, Callable

from absl import logging

from tapir import checkpoint as checkpoint_lib
from tapir import evaluation
from tapir import inference
from tapir import metrics
from tapir.data import sources
from tapir.data import tapvid


def model_kwargs_for(config, contents: checkpoint_lib.CheckpointContents) -> dict[str, Any]:
  """Architecture: the preset, else the settings stored in the file, else read off the parameter shapes."""
  if config.preset:
    kwargs = inference.preset_kwargs(config.preset)
  else:
    kwargs = contents.model_kwargs or checkpoint_lib.infer_model_kwargs(contents.params)
  if config.preset or contents.model_kwargs is None:
    kwargs.update(config.model_overrides.to_dict())
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def predictors(config) -> dict[str, Callable]:
  out = {}
  if config.checkpoint:
    contents = checkpoint_lib.read_checkpoint(config.checkpoint)
    tracker = inference.Tracker(contents.params, contents.state, model_kwargs_for(config, contents),
                                query_chunk_size=config.query_chunk_size)
    resize_to = None if config.full_resolution else tuple(config.resolution)

    def predict(video, query_points):
      result = tracker.predict(video, query_points, resize_to=resize_to)
      return result.tracks, ~result.visible

    out['full_resolution' if config.full_resolution else 'tapir'] = predict
  else:
    logging.warning('no --config.checkpoint given: scoring the baselines only')
  for name in config.baselines:
    if name != 'zero_motion':
      raise ValueError(f'unknown baseline {name!r}; available: zero_motion')
    out[name] = evaluation.zero_motion_predictor
  return out


def examples(config, query_mode: str):
  resolution = None if config.full_resolution else tuple(config.resolution)
  if config.dataset == 'synthetic':
    from tapir.data import synthetic  # pylint: disable=g-import-not-at-top
    s = config.synthetic
    scenes = synthetic.SceneConfig(height=s.size[0], width=s.size[1], num_frames=s.num_frames)
    return sources.synthetic_evaluation_set(s.num_videos, query_mode, scenes, s.tracks)
  kwargs = dict(video_dir=config.video_dir) if config.dataset == 'csv' else {}
  return tapvid.open_dataset(config.dataset, config.path, query_mode, resolution=resolution, **kwargs)


def run(config, workdir: str) -> dict[str, evaluation.EvaluationResult]:
  """Evaluates every predictor on `config.dataset` in every query mode; writes files to `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  results = {}
  table = {}
  for name, predict in predictors(config).items():
    for mode in config.query_modes:
      logging.info('evaluating %s on %s (%s)', name, config.dataset, mode)
      result = evaluation.evaluate(predict, examples(config, mode), mode)
      stem = os.path.join(workdir, f'{config.dataset}_{mode}_{name}')
      result.to_json(stem + '.json')
      result.to_csv(stem + '.csv')
      results[f'{name}/{mode}'] = result
      table[f'{config.dataset} {mode}: {name}'] = result.mean
  markdown = metrics.format_results_table(table, 'markdown')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(workdir, 'results.tex'), 'w') as f:
    f.write(metrics.format_results_table(table, 'latex'))
  logging.info('results:\n%s', markdown)
  print(markdown)
  return results
