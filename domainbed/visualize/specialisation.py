"""Do experts specialise to domains or to visual content? Normalised mutual information of the
top-1 expert with the domain and with the class, per MoE layer, over the runs a sweep selected.

The paper's second claim is that GMoE's experts pick up visual attributes rather than domains. If
routing followed the domain, the expert a patch goes to would tell its domain (high NMI with the
domain); if it follows content, it tells more about the class. NMI (arithmetic normalisation, as
scikit-learn's default) is computed from the token counts of ``visualize.usage``: every patch
token of every image is one observation of (expert, domain, class).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .experts import block_label
from .usage import ExpertUsage, row_shares


def entropy(probabilities: np.ndarray) -> float:
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(counts: np.ndarray) -> float:
    """NMI of the two variables of a contingency table ``counts[x, y]``: I(X;Y) / mean(H(X), H(Y))
    (0 when either variable is constant)."""
    joint = np.asarray(counts, dtype=float)
    joint = joint / joint.sum()
    px, py = joint.sum(1), joint.sum(0)
    hx, hy = entropy(px), entropy(py)
    if hx == 0 or hy == 0:
        return 0.0
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(px, py)[nonzero])).sum())
    return mutual / ((hx + hy) / 2)


@dataclass
class RunSpecialisation:
    """One selected run: where it is, what it held out, and its expert usage."""
    run_dir: str
    trial_seed: int
    test_env: int
    usage: ExpertUsage

    def nmi(self) -> dict[str, dict[str, float]]:
        return {layer: {"domain": normalized_mutual_information(self.usage.by_domain[layer]),
                        "class": normalized_mutual_information(self.usage.by_class[layer])}
                for layer in self.usage.by_domain}


def summarise(runs: list[RunSpecialisation]) -> dict:
    """Per layer: mean and standard error (DomainBed's: std of x / sqrt(n)) of each NMI over runs,
    plus every run's numbers (runs named by their folder, the job hash, not by this machine's path)."""
    layers = list(runs[0].usage.by_domain)
    nmis = [r.nmi() for r in runs]
    summary = {"runs": [{"run": Path(r.run_dir).name, "trial_seed": r.trial_seed, "test_env": r.test_env, "nmi": nmi}
                        for r, nmi in zip(runs, nmis)], "layers": {}}
    for layer in layers:
        summary["layers"][layer] = {}
        for variable in ("domain", "class"):
            values = np.array([nmi[layer][variable] for nmi in nmis])
            summary["layers"][layer][variable] = {"mean": float(values.mean()),
                                                  "stderr": float(np.std(values / np.sqrt(len(values))))}
    return summary


def representative_run(runs: list[RunSpecialisation]) -> RunSpecialisation:
    """The run whose class NMI (summed over layers) is the median of the runs': its share maps show
    a typical run (maps cannot be averaged over runs: expert indices are not comparable)."""
    ranked = sorted(runs, key=lambda r: sum(layer["class"] for layer in r.nmi().values()))
    return ranked[(len(ranked) - 1) // 2]


def specialisation_figure(runs: list[RunSpecialisation], title: str = "") -> Figure:
    """Left: NMI of the top-1 expert with the domain and with the class per MoE layer (mean and
    standard error over runs). Right: expert shares by domain and by class of each layer in one
    typical run (``representative_run``), on a colour scale from 0 to the largest share so that
    departures from the uniform 1/E show; the NMI bars carry the comparison across runs."""
    summary = summarise(runs)
    layers = list(summary["layers"])
    figure = Figure(figsize=(3.2 + 5.0 * len(layers), 3.8))
    grid = figure.add_gridspec(1, 1 + 2 * len(layers), width_ratios=[1.4] + [1.0] * (2 * len(layers)))
    bars = figure.add_subplot(grid[0, 0])
    x = np.arange(len(layers))
    for offset, variable, colour in ((-0.18, "domain", "tab:orange"), (0.18, "class", "tab:blue")):
        means = [summary["layers"][layer][variable]["mean"] for layer in layers]
        errors = [summary["layers"][layer][variable]["stderr"] for layer in layers]
        bars.bar(x + offset, means, 0.36, yerr=errors, capsize=3, color=colour, label=f"with {variable}")
    bars.set_xticks(x, [block_label(layer) for layer in layers], fontsize=8)
    bars.set_ylabel("NMI of top-1 expert", fontsize=8)
    bars.legend(fontsize=7)
    bars.set_title(f"{len(runs)} selected run{'s' if len(runs) != 1 else ''}", fontsize=8)
    typical = representative_run(runs)
    usage = typical.usage
    maps = {(layer, by): row_shares(getattr(usage, f"by_{by}")[layer]) for layer in layers for by in ("domain", "class")}
    largest = max(float(m.max()) for m in maps.values())
    for i, layer in enumerate(layers):
        for j, (by, names) in enumerate((("domain", usage.domain_names), ("class", usage.class_names))):
            ax = figure.add_subplot(grid[0, 1 + 2 * i + j])
            image = ax.imshow(maps[layer, by], cmap="viridis", vmin=0, vmax=largest, aspect="auto")
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.set_xticks(range(usage.num_experts), [str(e) for e in range(usage.num_experts)], fontsize=6)
            ax.set_xlabel("expert", fontsize=7)
            ax.set_title(f"{block_label(layer)} by {by}", fontsize=8)
    figure.colorbar(image, ax=figure.axes[-1], fraction=0.08,
                    label=f"share of tokens (trial {typical.trial_seed}, held out env {typical.test_env})")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def save_specialisation(runs: list[RunSpecialisation], output_dir: str | os.PathLike, title: str = "") -> list[Path]:
    """``specialisation.json`` (every run's NMIs and the summary) and ``specialisation.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output_dir / "specialisation.json", output_dir / "specialisation.png"
    json_path.write_text(json.dumps(summarise(runs), indent=1) + "\n")
    specialisation_figure(runs, title).savefig(png_path, dpi=110)
    return [json_path, png_path]
