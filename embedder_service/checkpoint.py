"""Finding a checkpoint (a local folder or a hub id), loading it as an image model, and naming what makes
its embedding space: the weights, the configuration, the preprocessing and the pooling, in a form that does
not change with the transformers version or with whether torchvision is installed."""

import hashlib
import inspect
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
# config.json keys that say where or how a file was written, not what the model computes.
VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
                        "architectures", "id2label", "label2id", "problem_type", "use_cache", "return_dict"}
# Models whose first output token is a class token the write-up's method takes as the image's embedding.
CLS_TOKEN_MODELS = {"vit", "deit", "dinov2", "dinov2_with_registers", "beit", "data2vec-vision", "vit_msn",
                    "vit_mae", "ijepa", "dinov3_vit"}
POOLINGS = ("auto", "cls", "mean", "pooler", "image_embeds")


class CheckpointError(ValueError):
    """The checkpoint cannot be found, loaded, or used to embed images; the message says why in one line."""


@dataclass(frozen=True)
class Source:
    name: str  # as given
    folder: Path | None  # a local checkpoint folder, or None for a hub id
    revision: str | None


def resolve(model: str, revision: str | None = None) -> Source:
    """A local folder (never looked up on the hub) or a hub id. A path that does not exist, or a name that
    is neither, fails here at once rather than after the hub's retries."""
    path = Path(model).expanduser()
    if path.is_dir():
        return Source(model, path.resolve(), None)
    if path.exists():
        raise CheckpointError(f"--model {model}: a file; give the checkpoint's folder or a hub id (owner/name)")
    first = Path(model.split("/", 1)[0]).expanduser()
    written_as_path = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or (
        "/" in model and first.is_dir())
    if written_as_path:
        siblings = sorted(p.name for p in path.parent.iterdir() if p.is_dir())[:8] if path.parent.is_dir() else []
        hint = f" ({path.parent}/ holds: {', '.join(siblings)})" if siblings else ""
        raise CheckpointError(f"--model {model}: no such folder{hint}")
    if not HUB_ID.fullmatch(model):
        raise CheckpointError(f"--model {model!r}: neither a checkpoint folder nor a hub id (owner/name)")
    return Source(model, None, revision)


def load(source: Source, trust_remote_code: bool, pooling: str):
    """(processor, model, config, chosen pooling) of an image model; refuses a model that takes no images."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    where = {"revision": source.revision, "trust_remote_code": trust_remote_code,
             "local_files_only": source.folder is not None}
    target = str(source.folder or source.name)
    if source.folder is None:
        log.info("loading %s from the Hugging Face hub (or its cache; HF_HUB_OFFLINE=1 uses only the cache)",
                 source.name)
    try:
        config = AutoConfig.from_pretrained(target, **where)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load {source.name}: {first_line(err)}") from None
    vision = getattr(config, "vision_config", None)
    model_type = config.model_type
    if pooling == "auto":
        pooling = default_pooling(config)
    kwargs = {}
    if pooling == "cls" and model_type in CLS_TOKEN_MODELS and accepts(AutoModel, config, "add_pooling_layer"):
        kwargs["add_pooling_layer"] = False  # the CLS token needs no pooler (and none was trained for it)
    try:
        processor = AutoImageProcessor.from_pretrained(target, **where)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source.name} has no image processor, so it is not an image model "
                              f"({model_type}): {first_line(err)}") from None
    try:
        with quiet_transformers():  # its load report, with terminal colours, is replaced by the lines below
            model, report = AutoModel.from_pretrained(target, **where, **kwargs, output_loading_info=True)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot load {source.name}: {first_line(err)}") from None
    describe_loading(source.name, report, pooling)
    takes_pixels = "pixel_values" in inspect.signature(model.forward).parameters
    if not takes_pixels and vision is None:
        raise CheckpointError(f"{source.name} is a {model_type} model, which takes no images (its forward has no "
                              "pixel_values): use a vision checkpoint")
    if pooling == "image_embeds" and not hasattr(model, "get_image_features"):
        raise CheckpointError(f"--pooling image_embeds needs a model with projected image features (CLIP, SigLIP); "
                              f"{source.name} is {model_type}")
    return processor, model, config, pooling


@contextmanager
def quiet_transformers():
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def describe_loading(name: str, report: dict, pooling: str) -> None:
    """Weights of a task head the embedding does not use are expected (a classifier's checkpoint loaded as a
    base model); weights missing from the checkpoint are not, unless only the pooling that is not used needs
    them."""
    unexpected = sorted(report.get("unexpected_keys") or [])
    missing = sorted(report.get("missing_keys") or [])
    if unexpected:
        log.info("%s: %d weights of a task head are not used by the embedding (%s)", name, len(unexpected),
                 ", ".join(unexpected[:4]) + ("..." if len(unexpected) > 4 else ""))
    relevant = [key for key in missing if not (pooling != "pooler" and key.startswith("pooler."))]
    if relevant:
        log.warning("%s: %d weights are missing from the checkpoint and were initialised at random (%s): its "
                    "embeddings may not mean what it was trained for", name, len(relevant), ", ".join(relevant[:4]))


def default_pooling(config) -> str:
    """The write-up's CLS token for ViT-like models; the projected image embedding for CLIP-like ones; the
    model's own pooled output otherwise (CNNs, Swin, SigLIP towers), else the mean of its features."""
    if getattr(config, "vision_config", None) is not None and getattr(config, "projection_dim", None):
        return "image_embeds"
    if config.model_type in CLS_TOKEN_MODELS:
        return "cls"
    return "pooler"


def accepts(auto_class, config, argument: str) -> bool:
    try:
        model_class = auto_class._model_mapping[type(config)]
    except (KeyError, AttributeError):
        return False
    return argument in inspect.signature(model_class.__init__).parameters


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def weights_identity(source: Source, config) -> str:
    """The weights' content for a local folder; the hub commit they were resolved to otherwise."""
    if source.folder is not None:
        digest = hashlib.blake2b(digest_size=16)
        for path in sorted(p for p in source.folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
            digest.update(path.relative_to(source.folder).as_posix().encode())
            with path.open("rb") as weights:
                while chunk := weights.read(1 << 20):
                    digest.update(chunk)
        return f"local:{digest.hexdigest()}"
    commit = getattr(config, "_commit_hash", None)
    if not commit:
        raise CheckpointError(f"{source.name}: the hub commit of its files is unknown, so vectors could not be told "
                              "apart from another version's; pass --revision COMMIT")
    return f"hub:{source.name}@{commit}"


def canonical_config(config) -> dict:
    return {key: value for key, value in sorted(config.to_dict().items()) if key not in VOLATILE_CONFIG_KEYS}


def fingerprint(weights_id: str, config: dict, preprocessing: dict, pooling: str, compute: str) -> str:
    """Equal fingerprints mean the same embedding space: same weights, architecture, preprocessing, pooling and
    compute dtype (a vector made in bfloat16 is not bit-equal to one made in float32)."""
    payload = json.dumps({"weights": weights_id, "config": config, "preprocessing": preprocessing,
                          "pooling": pooling, "compute": compute, "rule": "imgsim-embedding/v2"},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
