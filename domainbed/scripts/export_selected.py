"""The model each selection method picked, ready to load:
``python -m domainbed.scripts.export_selected --input_dir SWEEP --output_dir OUT [--selection_method ...]``.

For every (dataset, algorithm, test environment, trial) of a sweep and every selection method,
the checkpoint the method selects (run and step, as ``collect_results`` counts it) is copied to
``OUT/<dataset>/<algorithm>/test_env<e>/trial<t>/<method>.pkl`` and described by one line of
``OUT/index.jsonl``: dataset, algorithm, test_envs, trial_seed, selection_method (DomainBed's class
name), run_dir, step, test_acc, model (the copy's path, relative to OUT; null with a ``reason``
when the run did not keep that checkpoint), plus backbone, hparams_seed and val_acc.

A run keeps what this needs without saving every checkpoint: ``model.pkl`` (the last step: what
the oracle selects) and ``model_best_val.pkl`` (the step training-domain validation selects, when
it is not the last). Leave-one-domain-out picks a step from other runs' records, so its model is
there only when it is the last step or the run saved every checkpoint
(``--save_model_every_checkpoint``). The copies load with ``evaluate`` and the visualisations.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from ..results.records import base_algorithm, label_methods, load_records
from ..results.selection import SELECTION_METHODS, Selection, selected_checkpoints
from ..run.folder import RunFolder
from ._cli import run_main

METHODS = {method.__name__: method for method in SELECTION_METHODS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: export the models a sweep's model "
                                                 "selection picked", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="the sweep's output_dir")
    parser.add_argument("--output_dir", required=True, help="where the models and index.jsonl go")
    parser.add_argument("--selection_method", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="DomainBed's selection method class names")
    return parser


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def model_of_checkpoint(selection: Selection) -> tuple[Path | None, str]:
    """The model file holding the selected checkpoint's weights, or (None, why not)."""
    folder = RunFolder(selection.run_dir)
    if selection.step == selection.last_step:
        if folder.model.exists():
            return folder.model, ""
        return None, "the run saved no model.pkl (--skip_model_save, or it has not finished)"
    if folder.best_val_model.exists() and _model_step(folder.best_val_model) == selection.step:
        return folder.best_val_model, ""
    if folder.model_at_step(selection.step).exists():
        return folder.model_at_step(selection.step), ""
    return None, (f"step {selection.step} is not the run's last ({selection.last_step}) and the run did not keep "
                  "it; train with --save_model_every_checkpoint to export what this method selects")


def _model_step(path: Path) -> int | None:
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return saved.get("model_step")


def export(input_dir: str, output_dir: str, method_names: list[str]) -> list[dict]:
    loaded = load_records(input_dir)
    if not loaded.records:
        raise FileNotFoundError(f"no records under {input_dir}; give the sweep's --output_dir")
    records = label_methods(loaded.records)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in method_names:
        for (trial_seed, dataset, label, test_env), selection in sorted(selected_checkpoints(records, METHODS[name]).items()):
            source, reason = model_of_checkpoint(selection)
            line = {"dataset": dataset, "algorithm": base_algorithm(label), "test_envs": [test_env],
                    "trial_seed": trial_seed, "selection_method": name, "run_dir": selection.run_dir,
                    "step": selection.step, "test_acc": selection.test_acc, "model": None,
                    "backbone": _backbone(records, selection.run_dir), "hparams_seed": selection.hparams_seed,
                    "val_acc": selection.val_acc}
            if source is None:
                line["reason"] = reason
            else:
                target = out / _slug(dataset) / _slug(label) / f"test_env{test_env}" / f"trial{trial_seed}" / f"{name}.pkl"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                line["model"] = str(target.relative_to(out))
            lines.append(line)
    (out / "index.jsonl").write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return lines


def _backbone(records: list[dict], run_dir: str) -> str | None:
    for record in records:
        if record["args"].get("output_dir") == run_dir:
            return record.get("hparams", {}).get("backbone")
    return None


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    lines = export(args.input_dir, args.output_dir, args.selection_method)
    exported = sum(line["model"] is not None for line in lines)
    print(f"{exported} of {len(lines)} selected checkpoints exported to {args.output_dir} (index.jsonl)")
    for line in lines:
        if line["model"] is None:
            print(f"  not kept: {line['dataset']} {line['algorithm']} test_env {line['test_envs'][0]} trial "
                  f"{line['trial_seed']} ({line['selection_method']}): {line['reason']}")
    return lines


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, OSError))
