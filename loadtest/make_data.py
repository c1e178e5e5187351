"""Writes the request files of the load tests from the offline default: real images and real embeddings.

    python loadtest/make_data.py

embed.json (one Embed request of 8 digit images), embed_stream.json (EmbedStream messages, one image each)
and search.json (a Search for one real query vector, with the shipped model's fingerprint). Requests are in
the protobuf JSON mapping ghz reads: bytes fields are base64. Rerun after retraining the model.
"""

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "loadtest" / "data"


def png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    from datasets import load_dataset

    from embedder_service.config import EmbedderConfig
    from embedder_service.server import load_pipeline
    from imgsim.assets import DEFAULT_DATASET

    test = load_dataset(DEFAULT_DATASET, split="test")
    # The fingerprint the services' defaults serve, float32 (what `--dtype auto` picks on machines without
    # native bfloat16; on others start the embedder with --dtype float32 for these files).
    model, info, pipeline = load_pipeline(EmbedderConfig(dtype="float32"), None, None)
    images = [{"id": f"digit-{i}", "data": png(test[i]["image"])} for i in range(8)]
    pixels = pipeline.preprocess(base64.b64decode(images[0]["data"]), "query")
    pipeline.stop()
    query = model.embed(pixels[None])[0]
    query = (query / np.linalg.norm(query)).astype("<f4")
    OUT.mkdir(parents=True, exist_ok=True)
    files = {
        "embed.json": {"images": images},
        "embed_stream.json": [{"images": [image]} for image in images],
        "search.json": {"model_fingerprint": info.fingerprint, "k": 5,
                        "queries": [{"float32_le": base64.b64encode(query.tobytes()).decode()}]},
    }
    for name, content in files.items():
        (OUT / name).write_text(json.dumps(content, indent=1) + "\n")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
