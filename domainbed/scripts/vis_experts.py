"""Which expert each patch goes to, and how expert usage splits by domain and by class:
``python -m domainbed.scripts.vis_experts --checkpoint model.pkl --images a.png --output_dir vis``
``python -m domainbed.scripts.vis_experts --checkpoint model.pkl --dataset PACS --data_dir D --output_dir vis``.

Writes ``<image name>_experts.png`` per image (one panel per MoE block, patches tinted by their
top-1 expert, dropped choices marked x) and, given ``--dataset``, ``usage_<layer>.png`` heat maps
(share of patch tokens per expert, rows = domains / classes) with their numbers in ``usage.json``.

Evaluation applies the capacity limit per image (the models' default ``eval_capacity``), so
routing does not depend on the batch; image maps still route one image at a time (a model set to
batch-wide evaluation capacity would otherwise differ), and usage runs batches of ``--batch_size``
(64) images of one environment, sampled with a fixed seed (``--max_per_env`` per environment).
"""

from __future__ import annotations

import argparse

from ..checkpoints import UnsafeCheckpointError
from ..visualize.experts import require_moe_layers, save_expert_maps
from ..visualize.inputs import image_names, input_spec, load_image_files
from ..visualize.usage import dataset_usage, save_usage
from ._cli import add_checkpoint_arguments, load_checkpoint_from_args, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Expert maps and expert usage of a trained GMoE")
    add_checkpoint_arguments(parser, help="a model.pkl of an SF-MoE/GMoE model")
    parser.add_argument("--images", nargs="*", default=[], help="image files to draw expert maps on")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset", default=None,
                        help="measure expert usage per domain and class on this dataset (also sets how "
                             "--images are preprocessed; default: the checkpoint's dataset)")
    parser.add_argument("--data_dir", default="./domainbed/data")
    parser.add_argument("--max_per_env", type=int, default=256, help="images per environment for usage")
    parser.add_argument("--batch_size", type=int, default=64, help="usage batch size (routing depends on it)")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    if not args.images and not args.dataset:
        raise ValueError("nothing to draw; pass --images FILE... and/or --dataset NAME")
    algorithm, device = load_checkpoint_from_args(args)
    try:
        require_moe_layers(algorithm.evaluation_model().featurizer)
    except ValueError:
        raise ValueError(f"checkpoint '{args.checkpoint}' has no MoE layers (backbone "
                         f"{algorithm.hparams.get('backbone')}); expert maps need an SF-MoE/GMoE model") from None
    paths = []
    if args.images:
        images = load_image_files(args.images, input_spec(algorithm, args.dataset))
        paths += save_expert_maps(algorithm, images, args.output_dir, image_names(len(images), paths=args.images),
                                  dataset=args.dataset)
    if args.dataset:
        usage = dataset_usage(algorithm, args.dataset, args.data_dir, args.max_per_env, args.batch_size, device)
        paths += save_usage(usage, args.output_dir)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, UnsafeCheckpointError))
