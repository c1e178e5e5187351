"""Trains the offline default model: a small ViT classifier on the default digits dataset.

The write-up's checkpoint (`nateraw/vit-base-beans`) is a ViT fine-tuned to classify its dataset, and its
CLS embedding is what the search compares. This script makes the same kind of checkpoint offline: a
`ViTForImageClassification` trained from scratch on imgsim/assets/digits, saved in the Hugging Face format
(config.json, model.safetensors, preprocessor_config.json) so the embedder loads it through the very same
`AutoModel`/`AutoImageProcessor` path as a hub checkpoint. A few minutes on a CPU; its output is committed.

    python scripts/train_default_model.py [--dataset imgsim/assets/digits] [--out imgsim/assets/vit-digits]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

SEED = 0


def make_model(num_labels: int, id2label: dict[int, str]) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=192,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return ViTForImageClassification(config)


def to_tensors(split, processor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = processor(images=[image.convert("RGB") for image in split["image"]], return_tensors="pt")
    return pixels["pixel_values"], torch.tensor(split["labels"])


def jitter(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 3 pixels: digits are centred, test ones a little less so."""
    shifted = torch.empty_like(batch)
    pad = torch.nn.functional.pad(batch, (3, 3, 3, 3), value=-1.0)
    offsets = torch.randint(0, 7, (batch.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        shifted[i] = pad[i, :, dy : dy + batch.shape[2], dx : dx + batch.shape[3]]
    return shifted


def accuracy(model, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        predicted = model(pixel_values=pixels).logits.argmax(-1)
    model.train()
    return float((predicted == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="imgsim/assets/digits", help="dataset folder or hub id")
    parser.add_argument("--out", type=Path, default=Path("imgsim/assets/vit-digits"), help="output folder")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    dataset = load_dataset(args.dataset)
    names = dataset["train"].features["labels"].names
    processor = ViTImageProcessorPil(
        do_resize=True,
        size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    train_x, train_y = to_tensors(dataset["train"], processor)
    test_x, test_y = to_tensors(dataset["test"], processor)
    model = make_model(len(names), dict(enumerate(names)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * int(np.ceil(len(train_x) / args.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=steps)
    started = time.monotonic()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            loss = model(pixel_values=jitter(train_x[rows], generator), labels=train_y[rows]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy(model, test_x, test_y):.3f}, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    model.eval()
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
