"""CLS-token attention maps of a checkpoint on image files, DINO-style:
``python -m domainbed.scripts.vis_attention --checkpoint model.pkl --images a.png b.jpg --output_dir vis``.

Writes ``<image name>_attention.png`` per image: the input, the mean over heads and every head's
map over the image, each outlined where the patches holding ``--threshold`` of the mass are.
Works for dense ViTs and GMoE models, ours and the authors' checkpoints.
"""

from __future__ import annotations

import argparse

from ..checkpoints import UnsafeCheckpointError, load_checkpoint
from ..distributed import DistEnv
from ..training import pick_device
from ..visualize.attention import save_attention_maps
from ..visualize.inputs import image_names, input_spec, load_image_files
from ._cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-head CLS attention maps of a trained ViT")
    parser.add_argument("--checkpoint", required=True, help="a model.pkl")
    parser.add_argument("--images", nargs="+", required=True, help="image files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="share of each map's attention mass the outlined patches hold (DINO: 0.6)")
    parser.add_argument("--block", type=int, default=-1, help="transformer block (default: the last)")
    parser.add_argument("--dataset", default=None,
                        help="preprocess images as this dataset's (default: the checkpoint's dataset)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--allow_unsafe_pickle", action="store_true",
                        help="allow full unpickling (runs code stored in the file: trusted files only)")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    algorithm = load_checkpoint(args.checkpoint, pick_device(args.device, DistEnv()), args.allow_unsafe_pickle)
    images = load_image_files(args.images, input_spec(algorithm, args.dataset))
    paths = save_attention_maps(algorithm, images, args.output_dir, image_names(len(images), paths=args.images),
                                threshold=args.threshold, block=args.block, dataset=args.dataset)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, UnsafeCheckpointError))
