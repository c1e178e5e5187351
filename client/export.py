"""Export and import of a collection as a Parquet file: every item's id, vector (the exact float32 bytes)
and typed metadata, with the collection's kind, parameters, model fingerprint and dimension in the file's
metadata. An export taken while writes go on holds each item as one consistent version, but not a single
point in time across items; stop writes for a point-in-time copy."""

import json
from pathlib import Path

import numpy as np



FORMAT = "imgsim-export/1"
IMPORT_BATCH = 4096


def export_collection(client, collection: str, out: Path, where: dict | None = None, progress: bool = True) -> int:
    """Writes the collection (or the items a filter holds for) to `out`; returns how many items."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    info = next((c for c in client.list_collections() if c.name == collection), None)
    if info is None:
        from client.errors import NotFound
        raise NotFound(f"no collection {collection!r}", None)
    schema = pa.schema([("id", pa.string()), ("vector", pa.binary()), ("metadata", pa.string())],
                       metadata={"imgsim": json.dumps({"format": FORMAT, "collection": info.name,
                                                       "index_kind": info.index_kind, "params": info.params,
                                                       "model_fingerprint": info.model_fingerprint,
                                                       "dimension": info.dimension})})
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".partial")
    bar = tqdm(total=info.count, desc="exporting", unit="item", disable=not progress)
    with pq.ParquetWriter(staging, schema) as writer:
        batch = {"id": [], "vector": [], "metadata": []}
        for item in client.scroll(collection, where=where, with_vectors=True):
            batch["id"].append(item.id)
            batch["vector"].append(np.asarray(item.vector, dtype="<f4").tobytes())
            batch["metadata"].append(json.dumps(item.metadata, sort_keys=True))
            if len(batch["id"]) >= IMPORT_BATCH:
                writer.write_table(pa.table(batch, schema=schema))
                written += len(batch["id"])
                bar.update(len(batch["id"]))
                batch = {key: [] for key in batch}
        if batch["id"]:
            writer.write_table(pa.table(batch, schema=schema))
            written += len(batch["id"])
            bar.update(len(batch["id"]))
    bar.close()
    staging.replace(out)
    return written


def read_header(path: Path) -> dict:
    import pyarrow.parquet as pq
    metadata = pq.read_schema(path).metadata or {}
    header = json.loads(metadata.get(b"imgsim", b"{}"))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an imgsim export ({FORMAT})")
    return header


def import_collection(client, path: Path, collection: str | None = None, progress: bool = True) -> tuple[str, int]:
    """Creates the collection the file describes (or fills an existing one of the same model) and writes
    every item; returns (collection, items written)."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    header = read_header(path)
    name = collection or header["collection"]
    client.create_collection(name, header["index_kind"], header["params"], header["model_fingerprint"],
                             header["dimension"], exist_ok=True)
    file = pq.ParquetFile(path)
    bar = tqdm(total=file.metadata.num_rows, desc="importing", unit="item", disable=not progress)
    written = 0
    for batch in file.iter_batches(batch_size=IMPORT_BATCH):
        columns = batch.to_pydict()
        matrix = np.frombuffer(b"".join(columns["vector"]), dtype="<f4").reshape(len(columns["id"]), -1)
        client.upsert(columns["id"], matrix, [json.loads(m) for m in columns["metadata"]],
                      fingerprint=header["model_fingerprint"], collection=name)
        written += len(columns["id"])
        bar.update(len(columns["id"]))
    bar.close()
    return name, written



