"""CLS-token attention maps of a checkpoint on image files, DINO-style:
``python -m domainbed.scripts.vis_attention --checkpoint model.pkl --images a.png b.jpg --output_dir vis``.

Writes ``<image name>_attention.png`` per image: the input, the mean over heads and every head's
map over the image, each outlined where the patches holding ``--threshold`` of the mass are.
Works for dense ViTs and GMoE models, ours and the authors' checkpoints.
"""

from __future__ import annotations

import argparse

from ..checkpoints import UnsafeCheckpointError
from ..visualize.attention import save_attention_maps
from ..visualize.inputs import image_names, input_spec, load_image_files
from ._cli import add_checkpoint_arguments, load_checkpoint_from_args, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-head CLS attention maps of a trained ViT")
    add_checkpoint_arguments(parser)
    parser.add_argument("--images", nargs="+", required=True, help="image files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="share of each map's attention mass the outlined patches hold (DINO: 0.6)")
    parser.add_argument("--block", type=int, default=-1, help="transformer block (default: the last)")
    parser.add_argument("--dataset", default=None,
                        help="preprocess images as this dataset's (default: the checkpoint's dataset)")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    algorithm, _ = load_checkpoint_from_args(args)
    images = load_image_files(args.images, input_spec(algorithm, args.dataset))
    paths = save_attention_maps(algorithm, images, args.output_dir, image_names(len(images), paths=args.images),
                                threshold=args.threshold, block=args.block, dataset=args.dataset)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, UnsafeCheckpointError))
