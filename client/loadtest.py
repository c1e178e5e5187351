"""A bounded gRPC load generator for `imgsim loadtest`: ghz's calls, data files and summary, in Python.

It takes the same call names (imgsim.v1.Index/Search or imgsim.v1.Index.Search) and the same JSON data
files as the ghz configs in loadtest/ (a request message, or a list of them for client-streaming calls).
"""

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format, message_factory

from imgsim.v1 import embedder_pb2, index_pb2

FILES = (embedder_pb2.DESCRIPTOR, index_pb2.DESCRIPTOR)
MAX_TOTAL = 10_000_000  # latencies are kept, 8 bytes each: a bound on memory


@dataclass(frozen=True)
class Method:
    path: str  # /imgsim.v1.Index/Search
    request_class: type
    response_class: type
    client_streaming: bool
    server_streaming: bool


def find_method(call: str) -> Method:
    """Resolves 'pkg.Service/Method' or 'pkg.Service.Method' among the imgsim.v1 services."""
    service_name, _, method_name = call.replace("/", ".").rpartition(".")
    for file in FILES:
        for service in file.services_by_name.values():
            if service.full_name == service_name and method_name in service.methods_by_name:
                method = service.methods_by_name[method_name]
                return Method(f"/{service.full_name}/{method.name}",
                              message_factory.GetMessageClass(method.input_type),
                              message_factory.GetMessageClass(method.output_type),
                              method.client_streaming, method.server_streaming)
    raise ValueError(f"unknown call {call!r}: give package.Service/Method, e.g. imgsim.v1.Index/Search")


def load_requests(method: Method, data_file: Path) -> list:
    """The request(s) of each call, from ghz-style JSON: one object, or a list for client-streaming calls."""
    data = json.loads(data_file.read_text())
    items = data if isinstance(data, list) else [data]
    if not method.client_streaming and len(items) != 1:
        raise ValueError(f"{method.path} takes one request message; {data_file} holds {len(items)}")
    return [json_format.ParseDict(item, method.request_class()) for item in items]


def invoker(channel: grpc.Channel, method: Method, requests: list, timeout: float):
    """A function making one call and consuming its whole answer."""
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(method.path, request_serializer=method.request_class.SerializeToString,
                                       response_deserializer=method.response_class.FromString)
    if method.client_streaming and method.server_streaming:
        return lambda: sum(1 for _ in callable_(iter(requests), timeout=timeout))
    if method.client_streaming:
        return lambda: callable_(iter(requests), timeout=timeout)
    if method.server_streaming:
        return lambda: sum(1 for _ in callable_(requests[0], timeout=timeout))
    return lambda: callable_(requests[0], timeout=timeout)


@dataclass(frozen=True)
class LoadResult:
    duration_s: float
    latencies_s: np.ndarray  # of every call, in completion order
    codes: Counter

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")


def run_load(channel: grpc.Channel, method: Method, requests: list, concurrency: int, total: int,
             timeout: float = 20.0) -> LoadResult:
    """Makes `total` calls from `concurrency` threads at once, as fast as the server answers."""
    if not 1 <= total <= MAX_TOTAL or concurrency < 1:
        raise ValueError(f"total must be 1..{MAX_TOTAL} and concurrency >= 1")
    call = invoker(channel, method, requests, timeout)
    latencies = np.zeros(total)
    codes: Counter = Counter()
    taken = iter(range(total))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                call()
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            latencies[index] = time.perf_counter() - started
            with lock:
                codes[code] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, total))]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return LoadResult(time.perf_counter() - started, latencies, codes)


def summary(result: LoadResult) -> str:
    """A ghz-like report: counts, rates, latency distribution, status code distribution."""
    ms = result.latencies_s * 1000
    lines = ["Summary:",
             f"  Count:        {len(ms)}",
             f"  Total:        {result.duration_s * 1000:.2f} ms",
             f"  Slowest:      {ms.max():.2f} ms",
             f"  Fastest:      {ms.min():.2f} ms",
             f"  Average:      {ms.mean():.2f} ms",
             f"  Requests/sec: {len(ms) / result.duration_s:.2f}",
             "",
             "Latency distribution:"]
    lines += [f"  {p} % in {np.percentile(ms, p):.2f} ms" for p in (10, 25, 50, 75, 90, 95, 99)]
    lines += ["", "Status code distribution:"]
    lines += [f"  [{code}]   {count} responses" for code, count in sorted(result.codes.items())]
    return "\n".join(lines)


def main(args) -> int:
    """imgsim loadtest: runs the load and prints the summary; exit code 1 when any call failed."""
    method = find_method(args.call)
    requests = load_requests(method, args.data_file)
    with grpc.insecure_channel(args.host) as channel:
        result = run_load(channel, method, requests, args.concurrency, args.total, args.timeout)
    print(summary(result))
    return 1 if result.errors else 0
