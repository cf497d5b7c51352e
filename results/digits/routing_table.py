"""One table of the routing analyses in results/digits/routing/*/specialisation.json: NMI of the top-1
expert (or k-means cluster) with class and with domain, per MoE block, mean +/- standard error over
the selected runs (sample s.d./sqrt(n)).

    python results/digits/routing_table.py --input_dir results/digits/routing > results/digits/routing/nmi.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from study_statistics import mean_se  # the study's one definition of the standard error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True)
    args = parser.parse_args()
    print(f"{'analysis':<20} {'block':<14} {'runs':>4} {'NMI with class':>18} {'NMI with domain':>18}")
    for path in sorted(Path(args.input_dir).glob("*/specialisation.json")):
        summary = json.loads(path.read_text())
        for layer in summary["layers"]:
            cells = []
            for variable in ("class", "domain"):
                mean, se, _ = mean_se([run["nmi"][layer][variable] for run in summary["runs"]])
                cells.append(f"{mean:.3f} +/- {se:.3f}")
            print(f"{path.parent.name:<20} {layer:<14} {len(summary['runs']):>4} {cells[0]:>18} {cells[1]:>18}")


if __name__ == "__main__":
    main()
