"""Flags with environment fallbacks: documented in --help, and a bad value stops the start with a clear message."""

import subprocess
import sys

import pytest

from conftest import ROOT
from embedder_service.__main__ import parse_config as embedder_config
from index_service.__main__ import parse_config as index_config


def test_environment_variables_fill_in_for_missing_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGSIM_INDEX_PORT", "6000")
    monkeypatch.setenv("IMGSIM_INDEX_DATA_DIR", str(tmp_path))
    config = index_config([])
    assert (config.serving.port, config.data_dir) == (6000, tmp_path)
    assert index_config(["--port", "7000"]).serving.port == 7000  # a flag beats the environment


def test_embedder_flags_build_a_frozen_config(monkeypatch):
    monkeypatch.setenv("IMGSIM_EMBEDDER_MAX_BATCH_SIZE", "8")
    config = embedder_config(["--model", "some/model", "--dtype", "bfloat16"])
    assert (config.model, config.dtype, config.max_batch_size) == ("some/model", "bfloat16", 8)
    with pytest.raises(AttributeError):
        config.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize("module, env, value, words", [
    ("index_service", "IMGSIM_INDEX_PORT", "70000", "must be an integer from 0 to 65535"),
    ("embedder_service", "IMGSIM_EMBEDDER_MAX_BATCH_SIZE", "0", "must be an integer from 1 to 4096"),
    ("embedder_service", "IMGSIM_EMBEDDER_TRUST_REMOTE_CODE", "maybe", "must be true or false"),
    # Environment values go through the same checks as flags, choices included.
    ("index_service", "IMGSIM_INDEX_KIND", "bogus", "must be one of flat, hnsw, ivfpq, lsh"),
    ("embedder_service", "IMGSIM_EMBEDDER_DTYPE", "float64", "must be one of auto, float32, bfloat16, float16"),
    ("index_service", "IMGSIM_INDEX_LOG_LEVEL", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR"),
    ("embedder_service", "IMGSIM_EMBEDDER_LOG_FORMAT", "xml", "must be one of text, json"),
    ("index_service", "IMGSIM_INDEX_STREAM_IDLE_S", "inf", "must be a finite number"),
    ("index_service", "IMGSIM_INDEX_HNSW_M", "1", "must be an integer from 2 to 256"),
    ("index_service", "IMGSIM_INDEX_IVF_NLIST", "0", "must be an integer from 1 to 65536"),
])
def test_a_bad_environment_value_fails_fast_with_a_clear_message(module, env, value, words):
    done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", env: value})
    assert done.returncode == 2
    assert words in done.stderr


@pytest.mark.parametrize("module", ["embedder_service", "index_service"])
def test_help_documents_every_option_with_its_environment_variable(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    options = [line.split()[0] for line in done.stdout.splitlines() if line.strip().startswith("--")]
    assert len(options) >= 6
    help_text = " ".join(done.stdout.split())
    assert help_text.count("[env IMGSIM_") == len(options)  # "-h, --help" is not counted in options


def test_index_refuses_a_port_that_another_server_holds(tmp_path):
    from conftest import start_index

    first = start_index(tmp_path / "a")
    try:
        done = subprocess.run([sys.executable, "-m", "index_service", "--port", str(first.port), "--data-dir",
                               str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        first.stop(0)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{first.port}" in done.stderr


@pytest.mark.parametrize("flags, words", [
    (["--hnsw-m", "1"], "argument --hnsw-m: must be an integer from 2 to 256, got 1"),
    (["--stream-idle-s", "inf"], "argument --stream-idle-s: must be a finite number"),
    (["--lsh-bits", "2", "--lsh-radius", "3"], "--lsh-radius 3 cannot exceed --lsh-bits 2"),
    (["--tls-key", "/etc/hostname"], "TLS needs both --tls-cert and --tls-key"),
])
def test_a_bad_flag_fails_before_anything_starts(flags, words, tmp_path):
    done = subprocess.run([sys.executable, "-m", "index_service", "--data-dir", str(tmp_path), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr
