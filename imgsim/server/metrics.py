"""Prometheus metrics of one server, in a registry of its own, served on a port of its own."""

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Readings:
    """A collector whose labelled gauge values are read at each scrape."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 read: Callable[[], Iterable[tuple[list[str], float]]]):
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, value in self.read():
            family.add_metric(label_values, value)
        yield family


class Metrics:
    """What every service reports; a service adds its own with `gauge`, `readings`, `histogram`, `counter`."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("imgsim_requests", "RPCs handled, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("imgsim_request_seconds", "RPC handling time, by method and status code",
                                 ["method", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._http = None

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def gauge(self, name: str, documentation: str, read) -> None:
        """A gauge whose value is read by calling `read()` at each scrape."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def readings(self, name: str, documentation: str, labels: list[str],
                 read: Callable[[], Iterable[tuple[list[str], float]]]) -> None:
        """A labelled gauge whose (label values, value) pairs are read at each scrape."""
        self.registry.register(_Readings(name, documentation, labels, read))

    def histogram(self, name: str, documentation: str, labels=(), buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, documentation, list(labels), buckets=buckets, registry=self.registry)

    def counter(self, name: str, documentation: str, labels=()) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns its port (port 0: any free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
