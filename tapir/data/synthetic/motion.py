"""Motion variety of the built-in scenes' dynamic objects: ballistic paths that bounce off the floor and fast
paths across the view (objects entering or leaving the frame), drawn from the scene's additions stream.
"""

import dataclasses

import numpy as np


def bounce_heights(height: float, speed: float, gravity: float, rest: float, restitution: float,
                   times: np.ndarray) -> np.ndarray:  # [t] float64
  """Heights at `times` of a body thrown up at `speed` from `height` under `gravity`, bouncing at `rest` with the
  velocity ratio `restitution` (closed form per flight; it stays at `rest` once a bounce is below 1e-4)."""
  out = np.full(times.shape, float(rest))
  start, z, v = 0.0, max(float(height), rest), float(speed)
  for _ in range(100):
    # Flight from (start, z, v): z + v s - g s^2 / 2 = rest at s = (v + sqrt(v^2 + 2 g (z - rest))) / g.
    duration = (v + np.sqrt(v * v + 2 * gravity * (z - rest))) / gravity
    inside = (times >= start) & (times < start + duration)
    s = times[inside] - start
    out[inside] = z + v * s - 0.5 * gravity * s * s
    impact = v - gravity * duration
    start, z, v = start + duration, rest, -impact * restitution
    if start > times[-1] or v < 1e-4:
      break
  return out


def vary_motion(extra: np.random.Generator, config, obj, lookat: np.ndarray, num_frames: int):
  """`obj` (a dynamic `scene.SceneObject` of a scene drawn with `config`, a `scene.SceneConfig`), possibly thrown
  on a bouncing path or sent across the view, past `lookat` [3] mid-clip (drawn from `extra`)."""
  throw, cross = extra.uniform(size=2)
  if cross < config.crossing_probability:  # through a point near the look-at target, mid-clip, fast
    heading = extra.uniform(0, 2 * np.pi)
    speed = extra.uniform(0.3, 0.6)
    velocity = speed * np.array([np.cos(heading), np.sin(heading), 0.0])
    middle = lookat + np.append(extra.uniform(-2, 2, size=2), 0.0)
    position = middle - velocity * (num_frames - 1) / 2
    position[2] = obj.position[2]
    rolling = obj.shape == 'sphere' and not obj.spin[2] and obj.position[2] == obj.scale
    spin = np.cross([0.0, 0.0, 1.0], velocity) / obj.scale if rolling else obj.spin  # rolling: v = spin x (r z)
    obj = dataclasses.replace(obj, position=position, velocity=velocity, spin=spin)
  if throw < config.ballistic_probability and config.gravity > 0:
    rest = obj.scale * (1.0 if obj.shape == 'sphere' else float(np.linalg.norm(obj.half)))
    position = obj.position.copy()
    position[2] = rest + extra.uniform(0.5, 4.0)
    velocity = obj.velocity.copy()
    velocity[2] = extra.uniform(-0.05, 0.25)
    obj = dataclasses.replace(obj, position=position, velocity=velocity, gravity=config.gravity, rest_height=rest,
                              restitution=float(extra.uniform(*config.restitution)))
  return obj
