"""Starts the embedder and the index as local child processes on free ports, for the demo and the tests."""

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from imgsim.healthcheck import is_serving


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalService:
    name: str
    address: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the service drains and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class LocalServices:
    services: list[LocalService] = field(default_factory=list)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def __enter__(self) -> "LocalServices":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_service(module: str, args: list[str], log_path: Path, ready_timeout: float = 120.0) -> LocalService:
    """Runs `python -m module --host 127.0.0.1 --port N args...` and waits until its health says SERVING."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
                                   stdout=log, stderr=subprocess.STDOUT)
    service = LocalService(module, address, process, log_path)
    try:
        wait_until_serving(service, ready_timeout)
    except BaseException:
        service.stop()
        raise
    return service


def wait_until_serving(service: LocalService, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with code {service.process.returncode} before serving:\n"
                               f"{service.log_tail()}")
        if is_serving(service.address, timeout=1.0):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{service.name} did not report SERVING within {timeout:.0f} s:\n{service.log_tail()}")


def start_local_services(model: str, data_dir: Path, log_dir: Path, embedder_args: list[str] = (),
                         index_args: list[str] = ()) -> LocalServices:
    """Starts an embedder serving `model` and an index keeping its data in `data_dir`."""
    services = LocalServices()
    try:
        services.services.append(start_service("index_service", ["--data-dir", str(data_dir), *index_args],
                                               log_dir / "index.log"))
        services.services.append(start_service("embedder_service", ["--model", model, *embedder_args],
                                               log_dir / "embedder.log"))
    except BaseException:
        services.stop()
        raise
    return services
