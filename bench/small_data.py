"""End-to-end small_data (issue 6.1): `python -m tlx +experiment=small_data` vs bench/bare_small_data.py.

Both are whole processes timed as a user runs them (imports included), alternating, on the demo data:
tlx with a fresh feature cache each time (so it does the full work: decode, forward once, train the head, test),
the bare script doing the same work by hand. Target: tlx at most 1.2x the bare loop (ratio of medians).

Usage: python bench/small_data.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import median, report, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-small-"))
    tlx, bare = [], []
    for r in range(args.repeats):
        tlx.append(
            timed(
                [
                    sys.executable,
                    "-m",
                    "tlx",
                    "+experiment=small_data",
                    "trainer.enable_progress_bar=false",
                    f"cache.dir={tmp / f'cache{r}'}",
                    f"hydra.run.dir={tmp / f'run{r}'}",
                ]
            )
        )
        bare.append(timed([sys.executable, "bench/bare_small_data.py"]))
    report(
        "small_data",
        {
            "runs each": args.repeats,
            "tlx small_data, cold cache: s (median)": median(tlx),
            "bare PyTorch+timm script: s (median)": median(bare),
            "ratio tlx/bare (target <= 1.2)": median(tlx) / median(bare),
            "tlx runs s": str([round(t, 2) for t in tlx]),
            "bare runs s": str([round(t, 2) for t in bare]),
        },
    )


if __name__ == "__main__":
    main()
