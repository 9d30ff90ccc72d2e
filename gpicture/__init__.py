"""gpicture: GPICTURE self-supervised LiDAR pre-training as a reproducible pipeline.

The library holds everything importable (readers, the synthetic world, the Zarr
store, the teacher, the models, training and evaluation); the command-line layer
lives in ``stages/``.
"""

__version__ = "0.1.0"
