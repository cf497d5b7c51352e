"""The prepared GPU check: correctness on CUDA, then the figures BENCHMARKS.md's GPU section holds.

    PYTHONPATH=. python3 benchmarks/gpu/check.py --out DIR          # on the H200 machine, < 8 minutes
    PYTHONPATH=. python3 benchmarks/gpu/check.py --out DIR --dry-run  # the same sequence, toy sizes, CPU

It needs only what that machine has (torch, timm, numpy, pillow, pytest; no network, no install).
Sections run in order, each timed; one that fails is recorded (with its error) and the rest go on;
one that would not fit in what is left of ``--budget_s`` is skipped and says so:

1. ``environment``: versions, GPU, grouped_mm support, and two ceilings (bf16 matmul TFLOP/s,
   device copy GB/s) to read the figures against.
2. ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (MoE on CUDA = CPU, grouped = loop, router
   fp32 under bf16, fresh noise per step and rank, resume bit-exact, every algorithm's bf16 update).
3. ``model_step``: the paper's figure: ViT-S/16 vs GMoE-S/16 top-1 and top-2, one training step
   (forward, cross-entropy + balance loss, backward, fused AdamW) at batch 160, 224 px, bf16
   autocast: ms per step, images/s, peak memory; eager and ``torch.compile``d.
4. ``moe_layer``: the MoE layer (top-1, capacity 1.5) against the dense FFN it replaces at ViT-S and
   ViT-B widths, loop and grouped experts, forward + backward, bf16.
5. ``data``: the loader's images/s on every CPU core for a 224 px JPEG tree, with DomainBed's whole
   training augmentation and with its colour half left to the device (``--augment_on``), the
   device's ms for that half, and an end-to-end ``train`` on that PACS-shaped tree each way:
   images/s and the share of the step spent waiting for data.

Writes ``DIR/gpu_check.md`` (the tables), ``DIR/gpu_check.json`` (every number) and
``DIR/log.txt`` (everything printed, the pytest output included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ------------------------------------------------------------------------------------- sizes
FULL = dict(batch=160, img=224, classes=7, warmup=6, steps=20, layer_tokens=32 * 197, layer_repeats=30,
            jpeg_per_class=48, jpeg_side=256, e2e_steps=40, e2e_batch=32, decode_batches=30, pytest_timeout=420)
DRY = dict(batch=8, img=32, classes=7, warmup=1, steps=2, layer_tokens=2 * 65, layer_repeats=2,
           jpeg_per_class=3, jpeg_side=40, e2e_steps=3, e2e_batch=4, decode_batches=2, pytest_timeout=120)
MODELS = {  # label -> (timm name, kwargs); the dry run swaps in the micro twins
    "ViT-S/16": ("vit_small_patch16_224", {}),
    "GMoE-S/16 top-1": ("gmoe_small_patch16_224", {"top_k": 1}),
    "GMoE-S/16 top-2": ("gmoe_small_patch16_224", {"top_k": 2}),
}
DRY_MODELS = {"ViT-S/16": "vit_micro_patch4_32", "GMoE-S/16 top-1": "gmoe_micro_patch4_32",
              "GMoE-S/16 top-2": "gmoe_micro_patch4_32"}
LAYER_SHAPES = {"ViT-S (384 -> 1536)": (384, 1536), "ViT-B (768 -> 3072)": (768, 3072)}


class Check:
    """The sections' shared state: device, sizes, budget, log and results."""

    def __init__(self, out: Path, dry_run: bool, budget_s: float):
        self.out, self.dry_run, self.budget_s = out, dry_run, budget_s
        self.device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
        self.size = DRY if dry_run else FULL
        self.started = time.perf_counter()
        self.results: dict = {"dry_run": dry_run, "sections": {}}
        self.log_file = open(out / "log.txt", "a")

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def run(self, name: str, section, needs_s: float) -> None:
        entry = {"status": "skipped", "seconds": 0.0}
        self.results["sections"][name] = entry
        if not self.dry_run and self.left_s() < needs_s:
            entry["reason"] = f"budget: {self.left_s():.0f} s left, needs about {needs_s:.0f} s"
            self.log(f"== {name}: skipped ({entry['reason']})")
            return
        self.log(f"== {name}")
        started = time.perf_counter()
        try:
            entry["result"] = section(self)
            entry["status"] = "ok"
        except Exception as error:  # recorded; the other sections still run
            entry["status"] = "failed"
            entry["error"] = "".join(traceback.format_exception_only(error)).strip()
            self.log(traceback.format_exc())
        entry["seconds"] = round(time.perf_counter() - started, 1)
        self.log(f"== {name}: {entry['status']} in {entry['seconds']} s")
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.results))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(check: Check, fn, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn``, each synchronised (CUDA events would not see host-side syncs)."""
    for _ in range(warmup):
        fn()
    check.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        check.sync()
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------- sections
def environment(check: Check) -> dict:
    import timm

    from domainbed.moe.experts import grouped_mm_unavailable_reason

    info = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "device": str(check.device), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    probe = torch.zeros(1, device=check.device)
    info["grouped_mm"] = grouped_mm_unavailable_reason(probe) or "available"
    if check.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        n = 8192
        a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        seconds = statistics.median(timed(check, lambda: a @ b, 3, 10))
        info["bf16_matmul_tflops"] = round(2 * n ** 3 / seconds / 1e12, 1)
        x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        seconds = statistics.median(timed(check, lambda: y.copy_(x), 3, 10))
        info["copy_gb_s"] = round(2 * x.numel() / seconds / 1e9, 1)
        del a, b, x, y
    check.log(json.dumps(info))
    return info


def cuda_tests(check: Check) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-p", "no:randomly",
               str(ROOT / "tests" / "test_cuda.py"), "-o", f"timeout={check.size['pytest_timeout']}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            timeout=check.size["pytest_timeout"] + 60)
    check.log(result.stdout[-6000:] + result.stderr[-3000:])
    summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line
               or " skipped" in line or " error" in line]
    outcome = {"returncode": result.returncode, "summary": summary[-1] if summary else result.stdout[-300:]}
    if result.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda failed: {outcome['summary']}")
    return outcome


def _build(check: Check, label: str, compiled: bool):
    import timm

    import domainbed.models  # noqa: F401  (registers the GMoE models)
    from domainbed.run.accelerator import compile_networks

    name, kwargs = MODELS[label]
    if check.dry_run:
        name = DRY_MODELS[label]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=check.size["classes"], img_size=check.size["img"],
                              drop_path_rate=0.1, **kwargs).to(check.device).train()
    fused = check.device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    holder = nn.Module()
    holder.network = model
    if compiled:
        compile_networks(holder, **({"backend": "eager"} if check.dry_run else {}))
    return holder.network, optimizer


def _train_step(model, optimizer, images, labels, dtype):
    from domainbed.moe import pop_aux_losses

    with torch.autocast(images.device.type, dtype=dtype):
        loss = F.cross_entropy(model(images), labels)
    balance = [value for values in pop_aux_losses(model).values() for value in values]
    if balance:
        loss = loss + 0.01 * torch.stack(balance).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _model_steps(check: Check, compiled: bool) -> dict:
    size, rows = check.size, []
    images = torch.randn(size["batch"], 3, size["img"], size["img"], device=check.device)
    labels = torch.randint(0, size["classes"], (size["batch"],), device=check.device)
    for compiled in (compiled,):
        for label in MODELS:
            if compiled and not check.dry_run and check.left_s() < 75:
                rows.append({"model": label, "compiled": True, "skipped": f"budget: {check.left_s():.0f} s left"})
                check.log(json.dumps(rows[-1]))
                continue
            model, optimizer = _build(check, label, compiled)
            if check.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            step = lambda: _train_step(model, optimizer, images, labels, torch.bfloat16)  # noqa: E731
            step()  # the first step compiles
            check.sync()
            first_s = time.perf_counter() - started
            times = timed(check, step, size["warmup"], size["steps"])
            ms = 1000 * statistics.median(times)
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if check.device.type == "cuda" else float("nan")
            row = {"model": label, "compiled": compiled, "ms_per_step": round(ms, 2),
                   "images_per_s": round(size["batch"] / (ms / 1000), 1), "peak_gib": round(peak, 2),
                   "first_step_s": round(first_s, 1),
                   "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
            rows.append(row)
            check.log(json.dumps(row))
            del model, optimizer
    base = next((r for r in rows if r["model"] == "ViT-S/16" and "skipped" not in r), None)
    for row in rows:
        if base is not None and "skipped" not in row:
            row["time_vs_vit"] = round(row["ms_per_step"] / base["ms_per_step"], 3)
            row["memory_vs_vit"] = round(row["peak_gib"] / base["peak_gib"], 3) if base["peak_gib"] == base["peak_gib"] else None
    return {"rows": rows}


def model_step(check: Check) -> dict:
    return _model_steps(check, compiled=False)


def model_step_compiled(check: Check) -> dict:
    """Last, and model by model within what is left of the budget: compilation takes most of it."""
    return _model_steps(check, compiled=True)


def moe_layer(check: Check) -> dict:
    from timm.layers import Mlp

    from domainbed.moe import SparseMoE
    from domainbed.moe.experts import grouped_mm_unavailable_reason

    size, rows = check.size, []
    dtype = torch.bfloat16
    for shape_label, (dim, hidden) in LAYER_SHAPES.items():
        if check.dry_run:
            dim, hidden = dim // 8, hidden // 8
        x = torch.randn(size["layer_tokens"] // 197 or 1, min(197, size["layer_tokens"]), dim, device=check.device)
        dense = Mlp(dim, hidden).to(check.device).train()
        variants = {"dense FFN": dense}
        for implementation in ("loop", "grouped"):
            if implementation == "grouped" and grouped_mm_unavailable_reason(x) is not None:
                continue
            torch.manual_seed(0)
            variants[f"MoE top-1, {implementation}"] = SparseMoE.from_mlp(
                dense, num_experts=6, top_k=1, capacity_factor=1.5, experts_implementation=implementation).train()
        for label, layer in variants.items():
            inputs = x.clone().requires_grad_()

            def step():
                with torch.autocast(check.device.type, dtype=dtype):
                    out = layer(inputs)
                out.float().sum().backward()
                if hasattr(layer, "pending_aux_losses"):
                    layer.pending_aux_losses = []

            ms = 1000 * statistics.median(timed(check, step, 3, size["layer_repeats"]))
            rows.append({"shape": shape_label, "layer": label, "ms_fwd_bwd": round(ms, 3)})
            check.log(json.dumps(rows[-1]))
    for row in rows:
        base = next(r for r in rows if r["shape"] == row["shape"] and r["layer"] == "dense FFN")
        row["vs_dense"] = round(row["ms_fwd_bwd"] / base["ms_fwd_bwd"], 3)
    return {"rows": rows, "tokens": size["layer_tokens"]}


def _jpeg_tree(check: Check) -> Path:
    """A PACS-shaped tree (4 domains x 7 classes) of JPEG files with real-image-like content."""
    import numpy as np
    from PIL import Image

    root = check.out / "pacs_like"
    side, per_class = check.size["jpeg_side"], check.size["jpeg_per_class"]
    rng = np.random.default_rng(0)
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        for label in ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"):
            folder = root / "PACS" / domain / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                low = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
                image = Image.fromarray(low).resize((side, side), Image.BICUBIC)
                image.save(folder / f"{i}.jpg", quality=90)
    return root


def _loader_rate(check: Check, dataset, on_device: bool, workers: int) -> float:
    """Training images/s that ``workers`` loader processes deliver (decode + the loader's augmentation)."""
    from torch.utils.data import DataLoader

    from domainbed.data.loaders import SeededTransform, StepBatchSampler

    size, environment = check.size, dataset[0]
    loader = DataLoader(SeededTransform(environment, dataset.train_transform(0, on_device)),
                        batch_sampler=StepBatchSampler(len(environment), size["e2e_batch"] * 3, seed=0),
                        num_workers=workers, persistent_workers=True, prefetch_factor=4)
    batches = iter(loader)
    next(batches)  # workers started
    started = time.perf_counter()
    for _ in range(size["decode_batches"]):
        next(batches)
    rate = size["decode_batches"] * size["e2e_batch"] * 3 / (time.perf_counter() - started)
    del batches, loader
    return rate


def _device_augment_ms(check: Check, dataset) -> float:
    """ms the device takes to jitter, grayscale and normalise one model-step batch of uint8 images."""
    from domainbed.data.device_augment import PhotometricDraw

    size = check.size
    augment, draw = dataset.device_augment(0, True), PhotometricDraw()
    images = torch.randint(0, 256, (size["batch"], 3, size["img"], size["img"]), dtype=torch.uint8, device=check.device)
    params = torch.stack([draw(image)[1] for image in images.cpu()])
    return statistics.median(timed(check, lambda: augment(images, params), size["warmup"], size["steps"])) * 1000


def _train_on_jpegs(check: Check, root: Path, augment_on: str) -> dict:
    size = check.size
    run_dir = check.out / f"e2e_run_{augment_on}"
    command = [sys.executable, "-m", "domainbed.scripts.train", "--data_dir", str(root), "--dataset", "PACS",
               "--algorithm", "SFMOE", "--test_envs", "3", "--steps", str(size["e2e_steps"]),
               "--checkpoint_freq", str(max(size["e2e_steps"] // 2, 1)), "--output_dir", str(run_dir),
               "--precision", "bf16", "--no-progress", "--eval_batch_size", "256", "--augment_on", augment_on,
               "--hparams", json.dumps({"pretrained": False, "batch_size": size["e2e_batch"], "image_size": size["img"],
                                        **({"backbone": "gmoe_micro_patch4_32"} if check.dry_run else {})})]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    check.log(result.stdout[-3000:] + result.stderr[-3000:])
    if result.returncode:
        raise RuntimeError(f"train exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    last = records[-1]  # the interval after the first checkpoint: compilation and warm-up excluded
    images_per_step = 3 * size["e2e_batch"]
    return {"augment_on": augment_on, "train_images_per_s": round(images_per_step / last["step_time"], 1),
            "data_wait_share": round(last["data_time"] / last["step_time"], 3),
            "step_time_s": round(last["step_time"], 4), "images_per_step": images_per_step}


def data(check: Check) -> dict:
    """The loader's rate with the whole augmentation and with its colour half left to the device, the
    device's cost for that half, and ``train`` end to end both ways."""
    from domainbed.data.registry import get_dataset_class

    root = _jpeg_tree(check)
    workers = os.cpu_count() or 1
    dataset = get_dataset_class("PACS")(str(root), [3], {"image_size": check.size["img"]})
    rates = {mode: round(_loader_rate(check, dataset, mode == "device", workers), 1) for mode in ("loader", "device")}
    check.log(f"loader images/s on {workers} workers: {rates}")
    augment_ms = round(_device_augment_ms(check, dataset), 3)
    check.log(f"device colour augmentation: {augment_ms} ms per batch of {check.size['batch']}")
    runs = [_train_on_jpegs(check, root, mode) for mode in ("loader", "device")]
    return {"workers": workers, "loader_images_per_s": rates, "device_augment_ms_per_batch": augment_ms,
            "batch": check.size["batch"], "runs": runs}


# ------------------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    sections = results["sections"]
    lines = [f"# GPU check{' (dry run: toy sizes on CPU, numbers mean nothing)' if results['dry_run'] else ''}", ""]
    env = sections.get("environment", {}).get("result", {})
    if env:
        lines += ["| " + " | ".join(env) + " |", "|" + "---|" * len(env), "| " + " | ".join(map(str, env.values())) + " |", ""]
    lines += ["| section | status | seconds | note |", "|---|---|---|---|"]
    for name, entry in sections.items():
        note = entry.get("error") or entry.get("reason") or (entry.get("result") or {}).get("summary", "")
        lines.append(f"| {name} | {entry['status']} | {entry['seconds']} | {str(note)[:200]} |")
    step_rows = [row for name in ("model_step", "model_step_compiled")
                 for row in (sections.get(name, {}).get("result") or {}).get("rows", [])]
    if step_rows:
        lines += ["", "Training step, batch 160 at 224 px, bf16 autocast, fused AdamW:", "",
                  "| model | compiled | ms/step | images/s | peak GiB | x ViT-S time | x ViT-S memory | first step s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in step_rows:
            if "skipped" in r:
                lines.append(f"| {r['model']} | {'yes' if r['compiled'] else 'no'} | skipped ({r['skipped']}) | | | | | |")
                continue
            lines.append(f"| {r['model']} | {'yes' if r['compiled'] else 'no'} | {r['ms_per_step']} | {r['images_per_s']} | "
                         f"{r['peak_gib']} | {r.get('time_vs_vit')} | {r.get('memory_vs_vit')} | {r['first_step_s']} |")
    layer = sections.get("moe_layer", {}).get("result")
    if layer:
        lines += ["", f"MoE layer (6 experts, top-1, capacity 1.5) vs dense FFN, {layer['tokens']} tokens, bf16, "
                      "forward + backward:", "", "| shape | layer | ms | x dense |", "|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['layer']} | {r['ms_fwd_bwd']} | {r['vs_dense']} |" for r in layer["rows"]]
    loading = sections.get("data", {}).get("result")
    if loading:
        rates = loading["loader_images_per_s"]
        lines += ["", f"Data (224 px JPEG, DomainBed's training augmentation, {loading['workers']} loader workers; "
                      f"colour augmentation on the device: {loading['device_augment_ms_per_batch']} ms per "
                      f"{loading['batch']} images):", "",
                  "| colour augmentation on | loader images/s | train images/s (SF-MoE, GMoE-S/16, bf16) | data wait share |",
                  "|---|---|---|---|"]
        lines += [f"| {r['augment_on']} | {rates[r['augment_on']]} | {r['train_images_per_s']} | {r['data_wait_share']} |"
                  for r in loading["runs"]]
    return "\n".join(lines) + "\n"


SECTIONS = (("environment", environment, 20), ("cuda_tests", cuda_tests, 150), ("moe_layer", moe_layer, 30),
            ("model_step", model_step, 40), ("model_step_compiled", model_step_compiled, 80), ("data", data, 120))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.md, gpu_check.json, log.txt")
    parser.add_argument("--dry-run", action="store_true", help="the same sequence at toy sizes on CPU")
    parser.add_argument("--budget_s", type=float, default=450, help="skip sections that would end later than this")
    parser.add_argument("--sections", nargs="+", choices=[name for name, _, _ in SECTIONS],
                        default=[name for name, _, _ in SECTIONS])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, args.budget_s)
    if not args.dry_run and check.device.type != "cuda":
        check.log("warning: no CUDA device: the figures below are CPU figures")
    for name, section, needs_s in SECTIONS:
        if name in args.sections:
            check.run(name, section, needs_s)
    check.log(markdown(check.results))
    return check.results


if __name__ == "__main__":
    results = main()
    raise SystemExit(0 if all(entry["status"] != "failed" for entry in results["sections"].values()) else 1)
