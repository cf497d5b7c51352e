"""The prepared GPU check (benchmarks/gpu/check.py) runs its whole sequence at toy sizes on CPU, so that
it cannot rot between the sessions that have a GPU: every section runs and fills its table."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_dry_run_fills_every_table(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu" / "check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    results = check.main(["--out", str(tmp_path), "--dry-run"])
    sections = results["sections"]
    assert {name: entry["status"] for name, entry in sections.items()} == {
        name: "ok" for name, _, _ in check.SECTIONS}, json.dumps(sections, default=str)[:3000]
    steps = sections["model_step"]["result"]["rows"] + sections["model_step_compiled"]["result"]["rows"]
    assert [(row["model"], row["compiled"]) for row in steps] == [
        (model, compiled) for compiled in (False, True) for model in check.MODELS]
    assert all(row["ms_per_step"] > 0 and row["images_per_s"] > 0 for row in steps)
    layers = sections["moe_layer"]["result"]["rows"]
    assert {row["shape"] for row in layers} == set(check.LAYER_SHAPES)
    assert {"dense FFN", "MoE top-1, loop"} <= {row["layer"] for row in layers}
    loading = sections["data"]["result"]
    assert set(loading["loader_images_per_s"]) == {"loader", "device"} and loading["device_augment_ms_per_batch"] > 0
    assert [run["augment_on"] for run in loading["runs"]] == ["loader", "device"]
    assert all(0 <= run["data_wait_share"] <= 1 and run["train_images_per_s"] > 0 for run in loading["runs"])
    assert "passed" in sections["cuda_tests"]["result"]["summary"] or "skipped" in sections["cuda_tests"]["result"]["summary"]
    report = (tmp_path / "gpu_check.md").read_text()
    assert report.count("| GMoE-S/16 top-1 |") == 2 and "| ViT-B (768 -> 3072) | dense FFN |" in report
    assert "| device | " in report
    assert json.loads((tmp_path / "gpu_check.json").read_text())["dry_run"] is True
