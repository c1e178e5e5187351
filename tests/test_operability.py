"""What operators and other teams' clients rely on: reflection, health, metrics, logs, TLS, tokens."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certificates import issue, make_ca
from client import ClientTls, InvalidArgument, SimilarityClient, Unauthenticated, Unavailable
from conftest import ROOT, SHIPPED_MODEL, png_bytes, start_embedder, start_index
from imgsim.server.config import ServingConfig
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc, index_pb2, index_pb2_grpc


def reflect(channel, **request) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)])))


def defined_services(response) -> set[str]:
    names = set()
    for raw in response.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        names |= {f"{file.package}.{service.name}" for service in file.service}
    return names


@pytest.mark.parametrize("symbol, service", [
    ("imgsim.v1.Index.Search", "imgsim.v1.Index"),
    ("imgsim.v1.Index", "imgsim.v1.Index"),
    ("imgsim.v1.Index.Upsert", "imgsim.v1.Index"),
])
def test_reflection_resolves_method_symbols_as_ghz_asks_for_them(index_channel, symbol, service):
    response = reflect(index_channel, file_containing_symbol=symbol)
    assert not response.HasField("error_response"), response.error_response
    assert service in defined_services(response)


def test_reflection_lists_the_services_and_refuses_unknown_symbols(embedder_channel):
    listed = reflect(embedder_channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {"imgsim.v1.Embedder", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert "imgsim.v1.Embedder" in defined_services(reflect(embedder_channel,
                                                            file_containing_symbol="imgsim.v1.Embedder.EmbedStream"))
    missing = reflect(embedder_channel, file_containing_symbol="imgsim.v1.Embedder.NoSuchMethod")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def health_status(address: str, credentials=None) -> int | None:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return None


def test_health_reports_serving_then_not_serving_while_draining_and_in_flight_calls_finish(tmp_path, digits):
    running = start_embedder(SHIPPED_MODEL, ServingConfig(drain_s=1.0), max_batch_delay_ms=600.0)
    address = f"127.0.0.1:{running.port}"
    assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
    outcome = {}

    def slow_call():
        with grpc.insecure_channel(address) as channel:
            response = embedder_pb2_grpc.EmbedderStub(channel).Embed(embedder_pb2.EmbedRequest(
                images=[embedder_pb2.Image(data=png_bytes(digits["test"][0]["image"]))]))
            outcome["kind"] = response.results[0].WhichOneof("outcome")

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.2)  # the call waits in the batcher (600 ms batch delay)
    stopper = threading.Thread(target=running.stop, args=(5.0,))
    stopper.start()
    time.sleep(0.3)
    assert health_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING  # drain window
    caller.join(10)
    stopper.join(10)
    assert outcome == {"kind": "vector"}  # the in-flight call was finished, not dropped
    assert health_status(address) is None  # stopped


def test_embedder_health_is_not_serving_until_the_model_is_warm(tmp_path):
    from client.local_services import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "embedder_service", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] != health_pb2.HealthCheckResponse.SERVING):
            seen.append(health_status(f"127.0.0.1:{port}"))
            time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(15)
    assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
    # Before SERVING it was unreachable or NOT_SERVING, never anything else.
    assert set(seen[:-1]) <= {None, health_pb2.HealthCheckResponse.NOT_SERVING}
    assert process.returncode == 0  # SIGTERM drained and exited cleanly


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoints_show_the_counters_moving(tmp_path, digits):
    embedder = start_embedder(SHIPPED_MODEL, ServingConfig(metrics_port=0))
    index = start_index(tmp_path / "data", ServingConfig(metrics_port=0))
    try:
        before = scrape(embedder.metrics_port)
        with SimilarityClient(embedder=f"127.0.0.1:{embedder.port}", index=f"127.0.0.1:{index.port}") as client:
            images = [digits["test"][i]["image"] for i in range(12)]
            client.add(images, [str(i) for i in range(12)])
            client.search(images[:3], k=2)
            with pytest.raises(InvalidArgument):
                client.search_vectors(np.ones(5, dtype=np.float32), k=2)  # wrong dimension
        after, index_metrics = scrape(embedder.metrics_port), scrape(index.metrics_port)
    finally:
        embedder.stop(0)
        index.stop(0)
    stream_ok = 'imgsim_requests_total{code="OK",method="/imgsim.v1.Embedder/EmbedStream"}'
    assert after[stream_ok] > before.get(stream_ok, 0)
    assert after["imgsim_embedder_images_total"] >= before.get("imgsim_embedder_images_total", 0) + 15
    assert after["imgsim_embedder_batch_size_count"] > 0
    assert after["imgsim_embedder_queue_wait_seconds_count"] >= 15
    assert "imgsim_embedder_queue_depth" in after
    assert index_metrics['imgsim_index_vectors{collection="default"}'] == 12
    assert index_metrics['imgsim_requests_total{code="INVALID_ARGUMENT",method="/imgsim.v1.Index/Search"}'] == 1
    assert index_metrics['imgsim_index_search_seconds_count{exact="false",kind="flat"}'] >= 1
    assert 'imgsim_request_seconds_bucket{code="OK",le="0.5",method="/imgsim.v1.Index/Upsert"}' in index_metrics
    assert 'imgsim_index_log_bytes{collection="default"}' in index_metrics
    assert 'imgsim_index_last_snapshot_timestamp_seconds{collection="default"}' in index_metrics


def test_json_logs_have_one_line_per_request_without_payloads(tmp_path):
    from client.local_services import free_port
    from imgsim.healthcheck import is_serving

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir",
                                str(tmp_path), "--log-format", "json", "--log-level", "DEBUG"], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    try:
        while not is_serving(f"127.0.0.1:{port}"):
            time.sleep(0.05)
        with SimilarityClient(index=f"127.0.0.1:{port}") as client:
            client.upsert(["a"], np.full((1, 4), 0.123456, dtype=np.float32), fingerprint="f")
            client.search_vectors(np.full(4, 0.5, dtype=np.float32), k=1, fingerprint="f")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    calls = [e for e in entries if e.get("rpc_method", "").startswith("/imgsim.v1.Index/")]
    assert [c["rpc_method"] for c in calls] == ["/imgsim.v1.Index/Upsert", "/imgsim.v1.Index/Search"]
    assert all(c["code"] == "OK" and c["ms"] >= 0 for c in calls)
    assert "0.123456" not in stderr and "float32_le" not in stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(folder)
    other_ca, other_cert, other_key = make_ca(folder, "another CA")
    return {"ca": ca, "server": issue(folder, "server", ca_cert, ca_key, server=True),
            "client": issue(folder, "client", ca_cert, ca_key, server=False),
            "stranger": issue(folder, "stranger", other_cert, other_key, server=False)}


def test_tls_serves_secure_clients_and_refuses_plaintext(tmp_path, pki):
    index = start_index(tmp_path / "tls", ServingConfig(tls_cert=pki["server"].cert, tls_key=pki["server"].key))
    address = f"127.0.0.1:{index.port}"
    try:
        with SimilarityClient(index=address, tls=ClientTls(root_ca=pki["ca"].cert)) as client:
            assert client.stats().count == 0
        with SimilarityClient(index=address, timeout=2) as plain, pytest.raises(Unavailable):
            plain.stats()
    finally:
        index.stop(0)


def test_the_container_health_check_speaks_tls_and_mutual_tls(tmp_path, pki):
    index = start_index(tmp_path / "hc", ServingConfig(tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                                                       tls_client_ca=pki["ca"].cert))

    def check(*args, **env):
        return subprocess.run([sys.executable, "-m", "imgsim.healthcheck", f"127.0.0.1:{index.port}", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env}).returncode
    try:
        assert check() == 1  # plaintext to a TLS service: down, as before
        assert check("--tls-ca", str(pki["ca"].cert)) == 1  # no client certificate
        assert check("--tls-ca", str(pki["ca"].cert), "--tls-cert", str(pki["client"].cert), "--tls-key",
                     str(pki["client"].key)) == 0
        assert check(IMGSIM_HEALTHCHECK_TLS_CA=str(pki["ca"].cert), IMGSIM_HEALTHCHECK_TLS_CERT=str(pki["client"].cert),
                     IMGSIM_HEALTHCHECK_TLS_KEY=str(pki["client"].key)) == 0
    finally:
        index.stop(0)


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(tmp_path, pki):
    index = start_index(tmp_path / "mtls", ServingConfig(tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                                                         tls_client_ca=pki["ca"].cert))
    address = f"127.0.0.1:{index.port}"
    try:
        trusted = ClientTls(root_ca=pki["ca"].cert, cert=pki["client"].cert, key=pki["client"].key)
        with SimilarityClient(index=address, tls=trusted) as client:
            assert client.stats().count == 0
        for refused in (ClientTls(root_ca=pki["ca"].cert),
                        ClientTls(root_ca=pki["ca"].cert, cert=pki["stranger"].cert, key=pki["stranger"].key)):
            with SimilarityClient(index=address, tls=refused, timeout=2) as client, pytest.raises(Unavailable):
                client.stats()
    finally:
        index.stop(0)


def test_bearer_token_guards_every_rpc_but_health(tmp_path, digits):
    index = start_index(tmp_path / "token", ServingConfig(auth_token="s3cret"))
    address = f"127.0.0.1:{index.port}"
    try:
        with SimilarityClient(index=address, token="s3cret") as client:
            assert client.stats().count == 0
        for token in (None, "wrong"):
            with SimilarityClient(index=address, token=token) as client, pytest.raises(Unauthenticated) as caught:
                client.stats()
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in str(caught.value)
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                list(index_pb2_grpc.IndexStub(channel).Upsert(iter([index_pb2.UpsertRequest()])) and [])
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        index.stop(0)


def test_token_from_a_file_and_tls_flags_reach_the_running_service(tmp_path, pki):
    from client.local_services import free_port

    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir",
                                str(tmp_path / "d"), "--auth-token-file", str(token_file), "--tls-cert",
                                str(pki["server"].cert), "--tls-key", str(pki["server"].key)], cwd=ROOT)
    try:
        credentials = grpc.ssl_channel_credentials(pki["ca"].cert.read_bytes())
        deadline = time.monotonic() + 30
        while health_status(f"127.0.0.1:{port}", credentials) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with SimilarityClient(index=f"127.0.0.1:{port}", tls=ClientTls(root_ca=pki["ca"].cert),
                              token="from-a-file") as client:
            assert client.stats().index_kind == "flat"
    finally:
        process.terminate()
        process.wait(15)


def test_tls_key_without_certificate_fails_fast(tmp_path, pki):
    done = subprocess.run([sys.executable, "-m", "index_service", "--port", "0", "--data-dir", str(tmp_path),
                           "--tls-key", str(pki["server"].key)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TLS needs both --tls-cert and --tls-key" in done.stderr
