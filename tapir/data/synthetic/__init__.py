"""Procedural Kubric-like scenes that emit MOVi-E example dicts, the built-in training and evaluation data:
`scene` (SceneConfig, scene kinds, objects, camera path and the seeded random draw `sample_scene`), `textures`
(solid textures), `photo_textures` (photographs mapped onto surfaces), `motion` (ballistic and crossing paths),
`cards` (photographed cards flying in front of the scene, off by default), `shading` (light and cast shadows),
`camera_effects` (motion blur, defocus, noise, compression, exposure) and `render` (ray casting and the MOVi-E
fields, `render_scene`), with `generate_scene(seed, config)` = `render_scene(sample_scene(seed, config), config)`.
Evaluation uses seeds `EVAL_SEEDS`, training seeds from `TRAIN_SEED_OFFSET` up; rotations and camera formulas
live in `tapir.data.geometry`.
"""

from tapir.data.geometry import box_corners
from tapir.data.geometry import look_at_quaternion
from tapir.data.geometry import matrix_to_quaternion
from tapir.data.geometry import quaternion_multiply
from tapir.data.geometry import quaternion_to_matrix
from tapir.data.synthetic.render import camera_rays
from tapir.data.synthetic.render import generate_scene
from tapir.data.synthetic.render import render_scene
from tapir.data.synthetic.scene import CameraPath
from tapir.data.synthetic.scene import EVAL_SEEDS
from tapir.data.synthetic.scene import FOCAL_LENGTH
from tapir.data.synthetic.scene import MAX_INSTANCES
from tapir.data.synthetic.scene import SCENE_KINDS
from tapir.data.synthetic.scene import sample_scene
from tapir.data.synthetic.scene import Scene
from tapir.data.synthetic.scene import SceneConfig
from tapir.data.synthetic.scene import SceneObject
from tapir.data.synthetic.scene import SENSOR_WIDTH
from tapir.data.synthetic.scene import TRAIN_SEED_OFFSET
from tapir.data.synthetic.photo_textures import PhotoTexture
from tapir.data.synthetic.textures import evaluate_texture
from tapir.data.synthetic.textures import sample_texture
from tapir.data.synthetic.textures import Texture
from tapir.data.synthetic.textures import TEXTURE_KINDS

__all__ = [
    'SceneConfig', 'Scene', 'SceneObject', 'CameraPath', 'sample_scene', 'render_scene', 'generate_scene',
    'camera_rays', 'SCENE_KINDS', 'PhotoTexture', 'EVAL_SEEDS', 'TRAIN_SEED_OFFSET', 'FOCAL_LENGTH', 'SENSOR_WIDTH', 'MAX_INSTANCES', 'Texture',
    'TEXTURE_KINDS', 'sample_texture', 'evaluate_texture', 'box_corners', 'look_at_quaternion',
    'matrix_to_quaternion', 'quaternion_multiply', 'quaternion_to_matrix',
]
