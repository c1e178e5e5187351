"""Builds the offline default dataset: scikit-learn's digits as 32x32 PNGs, in the layout `datasets` loads.

The write-up searches the `beans` dataset; nothing here can download it, so this script makes a small
stand-in with the same shape (an `image` Image column, a `labels` ClassLabel column, train and test
splits) from images that scikit-learn ships. Run once; its output is committed under imgsim/assets/.

    python scripts/make_default_dataset.py [--out imgsim/assets/digits]
"""

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIDE = 32
TEST_FRACTION = 0.2
SEED = 0


def digit_to_png(pixels: np.ndarray) -> bytes:
    """An 8x8 array of 0..16 grey levels as a 32x32 RGB PNG (bicubic upsampling keeps strokes smooth)."""
    grey = Image.fromarray(np.uint8(np.round(pixels * (255.0 / 16.0))), mode="L")
    big = grey.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def stratified_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(rows) * TEST_FRACTION))
        test.extend(rows[:n_test])
        train.extend(rows[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("imgsim/assets/digits"), help="output folder")
    args = parser.parse_args()

    # Imported here so that only this build step needs scikit-learn and datasets.
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from datasets import Value
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_rows, test_rows = stratified_split(labels, np.random.default_rng(SEED))
    features = Features(
        {
            "image": ImageFeature(),
            "labels": ClassLabel(names=[str(d) for d in range(10)]),
            "source": Value("string"),
        }
    )
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        table = {
            "image": [{"bytes": digit_to_png(digits.images[r]), "path": None} for r in rows],
            "labels": [int(labels[r]) for r in rows],
            "source": [f"sklearn-digits/{r}" for r in rows],
        }
        Dataset.from_dict(table, features=features).to_parquet(str(args.out / "data" / f"{split}.parquet"))
        print(f"{split}: {len(rows)} images")


if __name__ == "__main__":
    main()
