"""TAPIR: Tracking Any Point with per-frame Initialization and temporal Refinement (JAX/Haiku).

Conventions (shapes, coordinate order, value ranges) are stated once, in `tapir.conventions`.
Importing this package never imports TensorFlow; the data pipeline under `tapir.data` does so lazily.
"""
