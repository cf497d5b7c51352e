"""What DomainBed's training augmentation costs per 224 px image on one CPU core, part by part.

Decides where the colour augmentation runs on a GPU machine: if 16 cores at this cost cannot feed
what one GPU trains (thousands of images/s for a ViT-S/16), ``--augment_on device`` leaves the
colour jitter and grayscale to the GPU and the loader only decodes, crops, flips and draws. Each
part runs on the same decoded image (a 256 px JPEG of smooth random content, PACS-like size);
reported: the median ms per image, and the images/s 16 cores would give for the whole loader work
with each choice (an upper bound: perfect scaling, no other work).

    .venv/bin/python benchmarks/bench_augmentation.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from domainbed.data.device_augment import PhotometricAugment, PhotometricDraw
from domainbed.data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_train_transform


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    low = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(low).resize((256, 256), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()

    def decode():
        return Image.open(io.BytesIO(jpeg)).convert("RGB")

    image = decode()
    geometric = v2.Compose([v2.RandomResizedCrop(224, scale=(0.7, 1.0)), v2.RandomHorizontalFlip()])
    cropped = geometric(image)
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    parts = {
        "decode (JPEG -> RGB)": decode,
        "crop + flip": lambda: geometric(image),
        "colour jitter": lambda: v2.ColorJitter(0.3, 0.3, 0.3, 0.3)(cropped),
        "grayscale (p = 0.1)": lambda: v2.RandomGrayscale()(cropped),
        "to tensor + normalise": lambda: to_tensor(cropped),
        "loader, --augment_on loader (decode + all)": lambda: image_train_transform(224)(decode()),
        "loader, --augment_on device (decode + crop, flip, draws)": lambda: image_train_transform(224, True)(decode()),
    }
    rows = {name: median_ms(fn, args.repeats) for name, fn in parts.items()}
    batch = 32
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    draws = torch.stack([PhotometricDraw()(i)[1] for i in images])
    augment = PhotometricAugment(IMAGENET_MEAN, IMAGENET_STD)
    device_half = median_ms(lambda: augment(images, draws), max(args.repeats // 20, 5)) / batch
    print(f"torch {torch.__version__}, one thread; ms per 224 px image (median of {args.repeats})\n")
    print("| part | ms per image | 16 cores, images/s |")
    print("|---|---|---|")
    for name, ms in rows.items():
        rate = f"{16 * 1000 / ms:,.0f}" if name.startswith("loader") else ""
        print(f"| {name} | {ms:.2f} | {rate} |")
    print(f"| device half on this CPU (batch of {batch}, per image) | {device_half:.2f} | |")


if __name__ == "__main__":
    main()
