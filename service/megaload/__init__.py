"""megaload: load, serve and save Megatron checkpoints.

The library lives in :mod:`megaload.checkpoint` and needs no HTTP layer.
"""

__version__ = "0.1.0"
