"""Representative images of each dataset, per environment (DomainBed's script):
``python -m domainbed.scripts.save_images --data_dir D --output_dir OUT``.

Saves ``--n_images`` (50) images of every environment of each dataset, drawn with a fixed seed, as
DomainBed names them (``<dataset>_env<i><name>_<k>_idx<index>_class<label>.png``), after the
dataset's evaluation transform (so what the model sees; ImageNet normalisation undone). Datasets
whose data is not there are skipped with the command that downloads them.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from ._cli import run_main

DOMAINBED_DEFAULT = ("OfficeHome", "TerraIncognita", "DomainNet", "RotatedMNIST", "ColoredMNIST", "SVIRO")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Save sample images of each dataset's environments")
    parser.add_argument("--data_dir", default="./domainbed/data")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--datasets", nargs="+", default=list(DOMAINBED_DEFAULT),
                        help=f"default: DomainBed's ({' '.join(DOMAINBED_DEFAULT)})")
    parser.add_argument("--n_images", type=int, default=50, help="images per environment")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def save_dataset_images(name: str, data_dir: str, output_dir: Path, n_images: int, seed: int) -> list[Path]:
    from matplotlib.image import imsave

    from ..data.base import ImageDomainDataset
    from ..data.registry import get_dataset_class
    from ..visualize.inputs import InputSpec, to_display

    dataset_class = get_dataset_class(name, data_dir)
    dataset = dataset_class(data_dir, [], {})
    spec = InputSpec(tuple(dataset.input_shape), issubclass(dataset_class, ImageDomainDataset))
    rng = random.Random(f"{seed}-{name}")
    paths = []
    for env_index, environment in enumerate(dataset):
        env_name = dataset.ENVIRONMENTS[env_index]
        for k in range(n_images):
            index = rng.randrange(len(environment))
            raw, label = environment[index]
            path = output_dir / f"{name}_env{env_index}{env_name}_{k}_idx{index}_class{label}.png"
            imsave(path, to_display(dataset.eval_transform(raw), spec))
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    from ..data.registry import get_dataset_class

    args = build_parser().parse_args(argv)
    if args.n_images < 1:
        raise ValueError(f"--n_images must be >= 1, got {args.n_images}")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    saved, skipped = [], []
    for name in args.datasets:
        try:
            get_dataset_class(name, args.data_dir).check_data(args.data_dir)
        except (FileNotFoundError, ImportError) as error:
            skipped.append(name)
            print(f"skipped {name}: {error}", file=sys.stderr)
            continue
        saved += save_dataset_images(name, args.data_dir, output_dir, args.n_images, args.seed)
        print(f"{name}: {len(saved)} images so far in {output_dir}")
    if not saved:
        raise ValueError(f"no dataset found under {args.data_dir} ({', '.join(skipped)}); download one, "
                         "or name an embedded one: --datasets RotatedDigits")
    return saved


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError))
