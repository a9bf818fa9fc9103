"""TAPIR: Tracking Any Point with per-frame Initialization and temporal Refinement (JAX/Haiku).

Conventions (shapes, coordinate order, value ranges) are stated once, in `tapir.conventions`.
Importing this package never imports TensorFlow; the data pipeline under `tapir.data` does so lazily.
"""

from tapir import checkpoint
from tapir import conventions
from tapir.checkpoint import load_checkpoint
from tapir.checkpoint import save_checkpoint
from tapir.checkpoint import PRESETS
from tapir.models.tapir import FeatureGrids
from tapir.models.tapir import QueryFeatures
from tapir.models.tapir import TAPIR
from tapir.models.tapnet import TAPNet
from tapir.tracking.online import OnlineOutput
from tapir.tracking.online import OnlineTracker
from tapir.tracking.queries import grid_query_points
from tapir.tracking.queries import mask_query_points
from tapir.tracking.loader import load_tracker
from tapir.tracking.tapnet import TAPNetTracker
from tapir.tracking.tracker import Tracker

__all__ = [
    'checkpoint', 'conventions', 'load_checkpoint', 'save_checkpoint', 'grid_query_points', 'mask_query_points',
    'PRESETS', 'Tracker', 'OnlineTracker', 'OnlineOutput', 'FeatureGrids', 'QueryFeatures', 'TAPIR', 'TAPNet',
    'TAPNetTracker', 'load_tracker',
]
