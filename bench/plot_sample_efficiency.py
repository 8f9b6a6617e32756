"""Plot every ``bench/results/sample_efficiency_<env>_<steps>.json``: success at equal
environment steps, one group of bars per task, one bar per variant (mean over seeds, standard
error as the error bar, each seed a dot).

    python bench/plot_sample_efficiency.py        # writes docs/sample_efficiency.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "sb3": "Stable-Baselines3 SAC",
    "ours": "robot-sac up (defaults)",
    "ours_demos": "robot-sac up + expert",
}
COLOURS = {"sb3": "#7f7f7f", "ours": "#1f77b4", "ours_demos": "#2ca02c"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sample_efficiency.png")
    args = parser.parse_args()
    # one file per task and step count (sample_efficiency_<env>_<steps>.json); others are trials
    runs = [
        json.loads(p.read_text())
        for p in sorted((ROOT / "bench" / "results").glob("sample_efficiency_*.json"))
        if re.fullmatch(r"sample_efficiency_[A-Za-z0-9-]+_\d+\.json", p.name)
    ]
    fig, ax = plt.subplots(figsize=(2.4 * max(1, len(runs)) + 2.6, 3.6))
    variants = list(LABELS)
    width = 0.8 / len(variants)
    for g, run in enumerate(runs):
        for i, variant in enumerate(variants):
            result = run["results"].get(variant)
            if result is None:
                continue
            x = g + (i - (len(variants) - 1) / 2) * width
            err = result.get("standard_error") or 0.0
            ax.bar(x, result["mean"], width, yerr=err, capsize=3, color=COLOURS[variant],
                   label=LABELS[variant])  # fmt: skip
            ax.scatter(
                [x] * len(result["success"]), result["success"], s=8, color="black", zorder=3
            )
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(
        [f"{r['env']}\n{r['steps']:,} steps, {len(r['seeds'])} seeds" for r in runs], fontsize=8
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (unseen seeds)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("At equal environment steps (expert steps counted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
