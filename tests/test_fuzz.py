"""Property-based fuzzing of the image-decoding and request-validation paths.

Bounded for CI (IMGSIM_FUZZ_EXAMPLES, default 300 per property); run longer with e.g.
IMGSIM_FUZZ_EXAMPLES=20000 make test. Seeds live in tests/fuzz_corpus/seeds; failing examples hypothesis
finds are kept in tests/fuzz_corpus/examples and replayed on every run.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from transformers import AutoImageProcessor

from conftest import SHIPPED_MODEL
from embedder_service.errors import InvalidImage
from embedder_service.preprocess import Limits, make_preprocessor
from imgsim.v1 import common_pb2, index_pb2
from index_service import validation
from index_service.errors import IndexServiceError

CORPUS = Path(__file__).parent / "fuzz_corpus"
SEEDS = sorted((CORPUS / "seeds").iterdir())
FUZZ = settings(max_examples=int(os.environ.get("IMGSIM_FUZZ_EXAMPLES", "300")), deadline=None,
                database=DirectoryBasedExampleDatabase(str(CORPUS / "examples")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PREPROCESS = {
    "fast": make_preprocessor(AutoImageProcessor.from_pretrained(SHIPPED_MODEL), Limits(4_000_000, 64 << 20),
                              fast=True, draft=True),
    "reference": make_preprocessor(AutoImageProcessor.from_pretrained(SHIPPED_MODEL), Limits(4_000_000, 64 << 20),
                                   fast=False, draft=False),
}


@st.composite
def mutated_images(draw) -> bytes:
    """A valid seed file with bytes flipped, inserted, removed or cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and data:
            del data[position:position + draw(st.integers(1, 16))]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


def check_decodes_or_refuses(path: str, data: bytes) -> None:
    try:
        pixels = PREPROCESS[path](data, "fuzzed")
    except InvalidImage as err:
        assert str(err).startswith("fuzzed: ")
        return
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32 and np.isfinite(pixels).all()


@pytest.mark.parametrize("path", ["fast", "reference"])
@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_refused_as_invalid_images(path, data):
    check_decodes_or_refuses(path, data)


@pytest.mark.parametrize("path", ["fast", "reference"])
@FUZZ
@given(data=mutated_images())
def test_mutated_real_images_decode_or_are_refused_as_invalid_images(path, data):
    check_decodes_or_refuses(path, data)


vectors_bytes = st.one_of(st.binary(max_size=64),
                          st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=12).map(
                              lambda xs: np.asarray(xs, dtype="<f4").tobytes()))
items = st.builds(index_pb2.Item, id=st.text(max_size=300),
                  vector=vectors_bytes.map(lambda b: common_pb2.Vector(float32_le=b)),
                  metadata=st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=80))


typed_values = st.one_of(st.builds(index_pb2.Value, string_value=st.text(max_size=40)),
                         st.builds(index_pb2.Value, int_value=st.integers(-2**63, 2**63 - 1)),
                         st.builds(index_pb2.Value, float_value=st.floats(allow_nan=True, allow_infinity=True)),
                         st.builds(index_pb2.Value, bool_value=st.booleans()), st.just(index_pb2.Value()))


@FUZZ
@given(messages=st.lists(st.builds(index_pb2.UpsertRequest, model_fingerprint=st.text(max_size=40),
                                   items=st.lists(st.builds(index_pb2.Item, id=st.text(max_size=300),
                                                            vector=vectors_bytes.map(
                                                                lambda b: common_pb2.Vector(float32_le=b)),
                                                            metadata=st.dictionaries(st.text(max_size=40),
                                                                                     st.text(max_size=300), max_size=70),
                                                            typed_metadata=st.dictionaries(st.text(max_size=20),
                                                                                           typed_values, max_size=4)),
                                                  max_size=6)), min_size=1, max_size=3))
def test_upsert_validation_accepts_or_refuses_with_a_domain_error(messages):
    call = validation.UpsertCall()
    try:
        for message in messages:
            call.add(message)
        items = call.items()
    except IndexServiceError:
        return
    assert call.fingerprint
    assert len(set(items.ids)) == len(items.ids) and all(items.ids)
    assert items.raw.shape[0] == len(items.ids) and np.isfinite(items.raw).all()
    norms = np.linalg.norm(items.raw.astype(np.float64), axis=1)
    assert ((norms >= 1e-15) & (norms <= 1e15)).all()
    np.testing.assert_allclose(np.linalg.norm(items.unit, axis=1), 1.0, rtol=1e-5)


@FUZZ
@given(request=st.builds(index_pb2.SearchRequest, model_fingerprint=st.text(max_size=40),
                         queries=st.lists(vectors_bytes.map(lambda b: common_pb2.Vector(float32_le=b)), max_size=5),
                         k=st.integers(0, 2000),
                         filter=st.lists(st.builds(index_pb2.MetadataCondition, key=st.text(max_size=10),
                                                   any_of=st.lists(st.text(max_size=10), max_size=3)), max_size=3)))
def test_search_validation_accepts_or_refuses_with_a_domain_error(request):
    try:
        queries = validation.search_queries(request)
        where = validation.where_of(request.filter, None)
    except IndexServiceError:
        return
    assert 1 <= request.k <= validation.MAX_K
    assert queries.ndim == 2 and np.isfinite(queries).all() and np.all(np.any(queries, axis=1))
    assert (where is None) == (not request.filter)
