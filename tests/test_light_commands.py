"""Commands that only read records or list jobs import neither torch nor timm (which is what makes
them start in a fraction of a second; the start-up times are measured in BENCHMARKS.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("HEAVY", sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules))
"""


def write_records(folder: Path) -> None:
    record = {"args": {"dataset": "PACS", "algorithm": "ERM", "test_envs": [0], "trial_seed": 0,
                       "hparams_seed": 0, "output_dir": str(folder)},
              "hparams": {"backbone": "resnet50"}, "step": 0}
    record.update({f"env{i}_{split}_acc": 0.5 for i in range(4) for split in ("in", "out")})
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "done").write_text("done\n")


@pytest.mark.parametrize("module, argv, expected", [
    # the command did its work: the record's 50% in the table, DomainBed's job count (PACS: 4 single
    # + 6 pair test envs, Rotated digits 6 + 15; x 20 hparams x 3 trials), the record's run listed
    ("domainbed.scripts.collect_results", ["collect_results", "--input_dir", "{sweep}"],
     ["Total records: 1", "ERM                   50.0 +/- 0.0          X"]),
    ("domainbed.scripts.sweep", ["sweep", "status", "--datasets", "PACS", "RotatedDigits", "--algorithms", "ERM",
                                 "SFMOE", "Fish", "--output_dir", "{sweep}"],
     ["5580 jobs: 0 done, 0 incomplete, 5580 not launched", "PACS           SFMOE         0           0           600"]),
    ("domainbed.scripts.list_top_hparams", ["list_top_hparams", "--input_dir", "{sweep}", "--dataset", "PACS",
                                            "--algorithm", "ERM", "--test_env", "0"],
     ["{'val_acc': 0.5, 'test_acc': 0.5, 'step': 0}", "{sweep}/run"]),
])
def test_record_and_status_commands_import_neither_torch_nor_timm(module, argv, expected, tmp_path):
    write_records(tmp_path / "sweep" / "run")
    argv = [a.replace("{sweep}", str(tmp_path / "sweep")) for a in argv]
    result = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, module=module)], cwd=ROOT,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "HEAVY []", result.stdout[-500:]
    for text in expected:
        text = text.replace("{sweep}", str(tmp_path / "sweep"))
        assert any(line.strip().startswith(text) for line in lines), (text, result.stdout[-2000:])
