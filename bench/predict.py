"""Predicting and evaluating with a trained run: the network in the run's memory layout or not.

A run with ``channels_last: true`` (the default) trains and extracts features with a CNN converted to channels-last
(NHWC), the faster layout for oneDNN's convolutions; ``tlx.predict`` and ``tlx.evaluate`` rebuild the network from
the run and feed it the same way. This measures both layouts on the demo's 150 test images in one process,
alternating, with the loaders of the command line (``num_workers=auto``), and the whole ``python -m tlx.evaluate``
command on the same images.

Usage: python bench/predict.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, report, run_tlx, timed

from tlx.data import FileSamples
from tlx.predict import find_images, load_run, probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-predict-"))
    run_dir = tmp / "run"
    run_tlx(run_dir, "+experiment=small_data", f"cache.dir={tmp / 'cache'}")
    images = find_images(ROOT / "tlx" / "demo" / "test")
    samples = FileSamples(images, [0] * len(images))
    model = load_run(run_dir)
    assert model.channels_last, "the demo run converts its CNN to channels-last"
    layouts = {"channels_last": model, "contiguous": dataclasses.replace(model, channels_last=False)}
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    probs = {}
    probabilities(model, samples, num_workers="auto")  # warm-up: oneDNN's kernels, the file cache
    for _ in range(args.repeats):
        for name, m in layouts.items():
            t0 = time.perf_counter()
            probs[name], _, _ = probabilities(m, samples, num_workers="auto")
            seconds[name].append(time.perf_counter() - t0)
    cl, nchw = median(seconds["channels_last"]), median(seconds["contiguous"])
    evaluate = [
        timed(
            [
                sys.executable,
                "-m",
                "tlx.evaluate",
                f"run_dir={run_dir}",
                f"inputs={ROOT / 'tlx' / 'demo' / 'test'}",
                f"out={tmp / f'eval{r}'}",
            ]
        )
        for r in range(args.repeats)
    ]
    report(
        "predict",
        {
            "images (demo test set, 224 px)": len(images),
            "channels-last, as the run (s, median)": cl,
            "contiguous NCHW (s, median)": nchw,
            "contiguous / channels-last": nchw / cl,
            "channels-last images/s": len(images) / cl,
            "largest probability difference between the layouts": float(
                (probs["channels_last"] - probs["contiguous"]).abs().max()
            ),
            "python -m tlx.evaluate on these images, whole command (s, median)": median(evaluate),
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
