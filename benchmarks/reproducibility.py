"""Where run-to-run differences come from: the same run under different threads and instruction sets.

Trains the same short run (RotatedDigits, 75 degrees held out, ERM and SF-MoE on the micro ViTs)
under several environments and compares every record value (losses, accuracies): each environment
is reported as bit-identical to the first earlier one that gives exactly the same records, or as
new, with its largest difference from the first environment. Another CPU type is emulated by capping the instruction sets PyTorch's kernels
(ATEN_CPU_CAPABILITY), MKL (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA) dispatch to;
"deterministic" adds MKL's conditional numerical reproducibility mode (MKL_CBWR=COMPATIBLE) and
PyTorch's portable kernels (ATEN_CPU_CAPABILITY=default), which is what ``train --deterministic``
sets. Prints a table of differences and the mean step time of each environment.

    python benchmarks/reproducibility.py [--steps 40] [--algorithms ERM SFMOE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
DETERMINISTIC = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
ENVIRONMENTS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "1 thread, again": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "1 thread, AVX2 CPU": {"OMP_NUM_THREADS": "1", **AVX2},
    "2 threads, AVX2 CPU": {"OMP_NUM_THREADS": "2", **AVX2},
    "deterministic, 1 thread": {"OMP_NUM_THREADS": "1", **DETERMINISTIC},
    "deterministic, 1 thread, AVX2 CPU": {"OMP_NUM_THREADS": "1", **AVX2, **DETERMINISTIC},
    "deterministic, 2 threads": {"OMP_NUM_THREADS": "2", **DETERMINISTIC},
}
SKIPPED_KEYS = {"step_time", "data_time", "mem_gb", "environment", "args"}


def run(algorithm: str, steps: int, environment: dict, output_dir: Path) -> list[dict]:
    command = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "RotatedDigits",
               "--algorithm", algorithm, "--test_envs", "5", "--steps", str(steps),
               "--checkpoint_freq", str(steps // 2), "--hparams", '{"batch_size": 8}', "--skip_model_save",
               "--output_dir", str(output_dir), "--no-progress"]
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_NUM_THREADS", *AVX2, *DETERMINISTIC)}
    subprocess.run(command, env={**env, **environment, "PYTHONPATH": str(ROOT)}, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def largest_difference(records: list[dict], reference: list[dict]) -> float:
    """The largest absolute difference over every number in the records (0.0: bit-identical)."""
    worst = 0.0
    for record, expected in zip(records, reference, strict=True):
        for key, value in expected.items():
            if key in SKIPPED_KEYS or not isinstance(value, (int, float)):
                continue
            worst = max(worst, abs(record[key] - value))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--algorithms", nargs="+", default=["ERM", "SFMOE"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms:
            print(f"\n{algorithm}, {args.steps} steps; difference = the largest difference from '1 thread' "
                  "over every loss and accuracy of every record")
            print(f"{'environment':<36} {'bit-identical to':<26} {'difference':>10} {'held-out acc':>12} "
                  f"{'s/step':>7}")
            seen: dict[str, list[dict]] = {}
            for name, environment in ENVIRONMENTS.items():
                records = run(algorithm, args.steps, environment, Path(tmp) / f"{algorithm}-{len(os.listdir(tmp))}")
                reference = next(iter(seen.values()), records)
                same = next((other for other, earlier in seen.items()
                             if largest_difference(records, earlier) == 0), "(new)")
                seen[name] = records
                step_time = sum(r["step_time"] for r in records[1:]) / max(len(records) - 1, 1)
                print(f"{name:<36} {same:<26} {largest_difference(records, reference):>10.2e} "
                      f"{100 * records[-1]['env5_in_acc']:>11.1f}% {step_time:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
