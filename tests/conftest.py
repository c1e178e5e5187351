"""Fixtures: real servers on 127.0.0.1 port 0, the shipped model, and a second, differently shaped ViT."""

import io
from pathlib import Path

import grpc
import hypothesis  # noqa: F401  imported here, at a shallow stack: see below
import numpy as np
import pytest
from PIL import Image

from imgsim.server.config import ServingConfig

# Python 3.11.7's AST validator miscounts its recursion depth when a module is first parsed deep inside a
# hook chain (pytest rewriting hypothesis at the terminal summary of a run that never imported it), and the
# run ends in "SystemError: AST constructor recursion depth mismatch". Importing it up front avoids that.
ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "imgsim" / "assets" / "vit-digits"
SHIPPED_DATASET = ROOT / "imgsim" / "assets" / "digits"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo_like(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A smooth random colour field with edges: more like a photo than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def digits():
    from datasets import load_dataset

    return load_dataset(str(SHIPPED_DATASET))


@pytest.fixture(scope="session")
def second_vit(tmp_path_factory) -> Path:
    """A ViT of another shape (patch 8, hidden 48, 2 layers, 40x40 input, other mean/std), random weights."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("second-vit")
    config = ViTConfig(image_size=40, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=96)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 40, "width": 40}, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def start_embedder(model: Path, serving: ServingConfig = ServingConfig(), **overrides):
    """An in-process embedder on 127.0.0.1, port 0 unless `serving` says otherwise. float32 unless asked:
    --dtype auto may pick bfloat16 on a machine with native support, and the oracles here are float32."""
    from embedder_service.config import EmbedderConfig
    from embedder_service.server import create_server

    return create_server(EmbedderConfig(model=str(model), serving=serving, **{"dtype": "float32", **overrides}))


def served_info(model: Path, **settings):
    """The ModelInfo (fingerprint included) an embedder serving `model` with these settings reports."""
    from embedder_service.config import EmbedderConfig
    from embedder_service.server import load_pipeline

    config = EmbedderConfig(model=str(model), **{"dtype": "float32", **settings})
    embedding_model, info, pipeline = load_pipeline(config, None, None)
    pipeline.stop()
    return info


def start_index(data_dir: Path, serving: ServingConfig = ServingConfig(), **overrides):
    """An in-process index on 127.0.0.1, port 0 unless `serving` says otherwise."""
    from index_service.config import IndexConfig
    from index_service.server import create_server

    return create_server(IndexConfig(data_dir=data_dir, serving=serving, **overrides))


@pytest.fixture(scope="session")
def embedder():
    running = start_embedder(SHIPPED_MODEL)
    yield running
    running.stop(0)


@pytest.fixture
def index(tmp_path):
    running = start_index(tmp_path / "index")
    yield running
    running.stop(0)


@pytest.fixture(scope="session")
def embedder_channel(embedder):
    with grpc.insecure_channel(f"127.0.0.1:{embedder.port}") as channel:
        yield channel


@pytest.fixture
def index_channel(index):
    with grpc.insecure_channel(f"127.0.0.1:{index.port}") as channel:
        yield channel


def pytest_collection_finish(session):
    """Starts the one-part installs in the background when the packaging tests will run (see fresh_installs)."""
    if any(item.module.__name__ == "test_packaging" for item in session.items):
        import tempfile

        import fresh_installs
        root = Path(tempfile.mkdtemp(prefix="imgsim-fresh-installs-"))
        session.config.fresh_installs = fresh_installs.FreshInstalls(root).start()


def pytest_sessionfinish(session):
    installs = getattr(session.config, "fresh_installs", None)
    if installs is not None:
        import shutil
        for install in installs.installs.values():
            install.done.wait(60)
        shutil.rmtree(installs.root, ignore_errors=True)


@pytest.fixture(scope="session")
def fresh_installs(request):
    return request.config.fresh_installs
