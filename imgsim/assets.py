"""The offline default the project ships inside the package, found wherever it is installed: a small ViT
checkpoint (vit-digits) and a dataset (digits) with the write-up's shape. scripts/ rebuilds both."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = str(ASSETS / "vit-digits")
DEFAULT_DATASET = str(ASSETS / "digits")
