"""Test streams for adawise: batches of images in [0, 1] with labels, domains and running indices.

Submodules: ``base`` (Batch, Stream, StreamSpec), ``imagenet_r``, ``corruptions``, ``schedules``,
``fashion``. Only the base types are imported here so ``import streams`` stays light.
"""

from streams.base import Batch, ConcatStream, Stream, StreamSpec, TensorStream, concat, from_tensors

__all__ = ["Batch", "Stream", "StreamSpec", "TensorStream", "ConcatStream", "from_tensors", "concat"]
