"""The linear probe on large cached sets: its own choice of threads vs one thread, interleaved, in this process.

tlx.probe trains small grids (the demo's: 32 features a step) on one thread, where more threads were no faster, and
large ones on the run's threads. This measures both on random features of 1280 dimensions (the arithmetic does not
depend on their values) at sizes of the sweeps and beyond: 10,000 features of 10 classes (CIFAR-10 at 1000 per
class), 20,000 of 30, 5,000 of 100; 3 epochs each, validation on a fifth as many. Prints the medians and their ratio.

Usage: python bench/probe_large.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import median, report

from tlx.probe import Probe, _threads, fit_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the probe's own line per fit
    rows: dict = {}
    for n, k in ((10_000, 10), (20_000, 30), (5_000, 100)):
        gen = torch.Generator().manual_seed(0)
        x, vx = torch.randn(n, 1280, generator=gen), torch.randn(n // 5, 1280, generator=gen)
        y, vy = torch.randint(0, k, (n,), generator=gen), torch.randint(0, k, (n // 5,), generator=gen)
        times: dict[str, list[float]] = {"tlx": [], "one thread": []}
        for _ in range(args.repeats):
            for name in times:
                t0 = time.perf_counter()
                if name == "one thread":
                    with _threads(1):
                        fit_probe(x, y, vx, vy, k, Probe(), epochs=3)
                else:
                    fit_probe(x, y, vx, vy, k, Probe(), epochs=3)
                times[name].append(time.perf_counter() - t0)
        tlx, one = median(times["tlx"]), median(times["one thread"])
        rows[f"{n} x {k} classes, 3 epochs: tlx (s, median)"] = tlx
        rows[f"{n} x {k} classes, 3 epochs: one thread (s, median)"] = one
        rows[f"{n} x {k} classes: one thread / tlx"] = one / tlx
    rows["repeats"] = args.repeats
    report("probe_large", rows)


if __name__ == "__main__":
    main()
