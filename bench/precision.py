"""Feature extraction in mixed precision: `trainer.precision=bf16-mixed` against the default `32-true`.

Runs the README's first command (`python -m tlx +experiment=small_data`: the demo, 510 images at 224 px, the frozen
backbone's pooled features extracted, then the linear probe) from an empty feature cache, alternating the two
precisions. Reports medians of results.json's extraction time and of the whole process, their ratio, and each
precision's val/test accuracy. On a CPU with bfloat16 units (AVX512-BF16 / AMX) autocast runs the convolutions in
bfloat16; elsewhere the ratio shows what it costs.

Usage: python bench/precision.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import median, report, run_tlx

PRECISIONS = ("32-true", "bf16-mixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-precision-"))
    runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    for r in range(args.repeats):
        for precision in PRECISIONS:
            out = tmp / f"{precision}{r}"
            overrides = ["+experiment=small_data", f"trainer.precision={precision}", f"cache.dir={out / 'cache'}"]
            runs[precision].append(run_tlx(out, *overrides))  # an empty cache: every run extracts

    def med(precision: str, get) -> float:
        return median([get(r) for r in runs[precision]])

    extract = {p: med(p, lambda r: r["timing"]["extract_s"]) for p in PRECISIONS}
    wall = {p: med(p, lambda r: r["wall_s"]) for p in PRECISIONS}
    rows: dict = {}
    for p in PRECISIONS:
        rows[f"{p}: extraction of 510 images (s, median)"] = extract[p]
        rows[f"{p}: whole process (s, median)"] = wall[p]
        m = runs[p][0]["metrics"]
        rows[f"{p}: val/acc, test/acc"] = f"{m['val/acc']:.4f}, {m['test/acc']:.4f}"
    rows["extraction speed-up, bf16-mixed over 32-true"] = extract["32-true"] / extract["bf16-mixed"]
    rows["whole process speed-up"] = wall["32-true"] / wall["bf16-mixed"]
    rows["repeats"] = args.repeats
    report("precision", rows)


if __name__ == "__main__":
    main()
