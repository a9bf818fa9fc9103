"""One entry point for every export: the library behind `python -m experiments.export`.

    export_model('tapir.npz', 'npz', 'checkpoints/tapir_checkpoint_panning.npy', preset='tapir')
    export_model('tapir.safetensors', 'torch', 'ours.npz')                  # + tapir.json beside it
    export_model('causal.jaxexport', 'jax', 'causal.npy', preset='causal_tapir', artifact='online')

Formats (`FORMATS`), each written atomically:
  npz       our pickle-free checkpoint with the settings inside (`tapir.save_checkpoint`).
  official  the released `.npy` layout, a 0-d object array of {'params': {module: {name: array}}, 'state': ...}
            plus our settings and family as extra entries (the reference loader reads only 'params' and 'state').
  torch     the official PyTorch port's `.safetensors` and `.json` (`tapir.export.torch.write_torch`; TAPIR only).
  jax       a `jax.export` artifact with the weights inside (`tapir.export.jax_artifact`; TAPIR only): `artifact`
            'offline' or 'online' (causal models), shapes fixed by `frames`, `height`, `width`, `num_points`.
Weights load as everywhere else (`tapir.tracking.loader.load_weights`: a checkpoint of any format and a preset,
or random weights). Settings that do not fit the format or the model raise ValueError naming them.
"""

import os
from typing import Any, Mapping, NamedTuple, Sequence

from tapir import checkpoint as checkpoint_lib
from tapir.export import jax_artifact
from tapir.export import torch as torch_export
from tapir.tracking import loader

FORMATS = ('npz', 'official', 'torch', 'jax')
_JAX_ONLY = ('artifact', 'frames', 'height', 'width', 'num_points', 'platforms')


class Written(NamedTuple):
  format: str  # one of FORMATS
  paths: tuple[str, ...]  # the files written (torch: the .safetensors and its .json)
  sizes: tuple[int, ...]  # their sizes in bytes
  model_kwargs: dict[str, Any]  # the settings the weights were exported with


def export_model(out: str | os.PathLike, to: str, checkpoint: str | None = None, preset: str | None = None, *,
                 random_weights: bool = False, seed: int = 0, model_overrides: Mapping[str, Any] | None = None,
                 artifact: str | None = None, frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_points: int | None = None, query_chunk_size: int = 64,
                 platforms: Sequence[str] | None = None) -> Written:
  """Loads weights (as `loader.load_weights`) and writes them to `out` in format `to` (see the module docstring).

  Args:
    out: the file to write (torch: also `<out minus suffix>.json`).
    to: one of `FORMATS`.
    checkpoint, preset, random_weights, seed, model_overrides: which weights and architecture (`load_weights`).
    artifact, frames, height, width, num_points, query_chunk_size, platforms: the jax artifact's kind and shapes
      (`jax_artifact.export_artifact`); only with to='jax'.
  Raises ValueError naming the argument that does not fit, FileNotFoundError for a missing checkpoint.
  """
  if to not in FORMATS:
    raise ValueError(f'to must be one of {", ".join(FORMATS)}; got {to!r}')
  if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
    raise ValueError(f'out must be a file path; got {out!r}')
  out = os.fspath(out)
  if os.path.isdir(out):
    raise ValueError(f'out={out} is a directory: give the file to write')
  if model_overrides is not None and not isinstance(model_overrides, Mapping):
    raise ValueError(f'model_overrides must be a mapping of constructor settings; got {model_overrides!r}')
  jax_settings = dict(artifact=artifact, frames=frames, height=height, width=width, num_points=num_points,
                      platforms=platforms)
  given = [name for name in _JAX_ONLY if jax_settings[name] is not None]
  if to != 'jax' and given:
    raise ValueError(f'{", ".join(given)} {"apply" if len(given) > 1 else "applies"} only to the jax format '
                     f"(to='jax'); got to={to!r}")
  model = loader.load_weights(checkpoint, preset, random_weights=random_weights, seed=seed,
                              **dict(model_overrides or {}))
  if to in ('torch', 'jax') and model.family != 'tapir':
    raise ValueError(f'to={to!r} exports TAPIR models only; this checkpoint is a {model.family} model')
  checkpoint_lib.check_params(model.params, model.model_kwargs, model.state, family=model.family)
  if to == 'npz':
    checkpoint_lib.save_checkpoint(out, model.params, model.state, model_kwargs=model.model_kwargs,
                                   family=model.family)
    paths = (out,)
  elif to == 'official':
    checkpoint_lib.save_checkpoint(out, model.params, model.state, format='official',
                                   model_kwargs=model.model_kwargs, family=model.family)
    paths = (out,)
  elif to == 'torch':
    torch_export.write_torch(out, model.params, model.state, model.model_kwargs)
    paths = (out, os.path.splitext(out)[0] + '.json')
  else:
    exported = jax_artifact.export_artifact(
        model.params, model.state, model.model_kwargs, artifact or 'offline', frames=frames, height=height,
        width=width, num_points=num_points, query_chunk_size=query_chunk_size, platforms=platforms,
        source=dict(loader.describe(model)))
    jax_artifact.write_artifact(out, exported)
    paths = (out,)
  return Written(to, paths, tuple(os.path.getsize(p) for p in paths), dict(model.model_kwargs))
