"""Packs vectors into the wire form of imgsim.v1.Vector (little-endian float32 bytes) and back."""

import numpy as np

from imgsim.v1 import common_pb2

WIRE_DTYPE = np.dtype("<f4")


def to_proto(vector: np.ndarray) -> common_pb2.Vector:
    return common_pb2.Vector(float32_le=np.ascontiguousarray(vector, dtype=WIRE_DTYPE).tobytes())


def from_proto(message: common_pb2.Vector) -> np.ndarray:
    """The vector as float32; raises ValueError when the bytes cannot be float32 values."""
    data = message.float32_le
    if len(data) == 0:
        raise ValueError("vector is empty")
    if len(data) % WIRE_DTYPE.itemsize:
        raise ValueError(f"vector has {len(data)} bytes, not a multiple of 4 (packed float32)")
    return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32, copy=False)
