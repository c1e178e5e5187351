"""Measures the two wire forms a vector could take: `repeated float` vs packed float32 `bytes`.

Prints microseconds per vector to encode (numpy -> serialised message) and decode (bytes -> numpy), medians
of repeats, and the serialised size. The result chose the `Vector` message in protos/imgsim/v1/common.proto.

    python bench/wire.py [--dim 768] [--vectors 256] [--repeats 7]
"""

import argparse
import statistics
import time

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from imgsim.v1 import common_pb2


def repeated_float_message_class():
    """A throwaway message `message Floats { repeated float values = 1; }`, built at run time."""
    file = descriptor_pb2.FileDescriptorProto(name="bench_wire.proto", package="bench", syntax="proto3")
    message = file.message_type.add(name="Floats")
    message.field.add(name="values", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Floats"))


def per_vector_us(action, vectors, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for v in vectors:
            action(v)
        timings.append((time.perf_counter() - started) / len(vectors) * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--vectors", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    vectors = np.random.default_rng(0).standard_normal((args.vectors, args.dim)).astype(np.float32)
    floats = repeated_float_message_class()

    encode_floats = lambda v: floats(values=v.tolist()).SerializeToString()  # noqa: E731
    encode_bytes = lambda v: common_pb2.Vector(float32_le=v.astype("<f4").tobytes()).SerializeToString()  # noqa: E731
    wire_floats = [encode_floats(v) for v in vectors]
    wire_bytes = [encode_bytes(v) for v in vectors]
    decode_floats = lambda b: np.asarray(floats.FromString(b).values, dtype=np.float32)  # noqa: E731
    decode_bytes = lambda b: np.frombuffer(common_pb2.Vector.FromString(b).float32_le, dtype="<f4")  # noqa: E731
    assert np.array_equal(decode_floats(wire_floats[0]), decode_bytes(wire_bytes[0]))

    figures = {
        "repeated_float_encode_us": per_vector_us(encode_floats, vectors, args.repeats),
        "bytes_encode_us": per_vector_us(encode_bytes, vectors, args.repeats),
        "repeated_float_decode_us": per_vector_us(decode_floats, wire_floats, args.repeats),
        "bytes_decode_us": per_vector_us(decode_bytes, wire_bytes, args.repeats),
        "repeated_float_wire_bytes": len(wire_floats[0]),
        "bytes_wire_bytes": len(wire_bytes[0]),
    }
    figures["encode_ratio_float_over_bytes"] = figures["repeated_float_encode_us"] / figures["bytes_encode_us"]
    figures["decode_ratio_float_over_bytes"] = figures["repeated_float_decode_us"] / figures["bytes_decode_us"]
    for name, value in figures.items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
