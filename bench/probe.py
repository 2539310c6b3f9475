"""The cached head's training loop vs reading the cache (issue 9.3), on a warm cache.

Runs `python -m tlx +experiment=small_data` on the demo data with a warm feature cache, alternating:
- the linear probe (default): a grid of 16 (lr, weight decay) candidates trained at once in plain PyTorch,
- the Lightning loop it replaced (`probe.enabled=false`): one setting, 30 epochs.
Reports medians of results.json's own timings: the cache read (`cache.read_s`: loading the three entries), the whole
cache lookup but extraction (`cache.lookup_s`: hashing every image's bytes for the entries' keys, then the reads), the
head's training (the probe stage's seconds, or the Lightning fit), the whole fit phase and the whole run, plus val/test
accuracy of each.
Target: the probe spends no more on training than the run spends reading the cache.

Usage: python bench/probe.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import median, report, run_tlx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlx-bench-probe-"))
    base = ["+experiment=small_data", f"cache.dir={tmp / 'cache'}"]
    run_tlx(tmp / "warmup", *base)  # fills the cache: every timed run below reads it
    runs: dict[str, list[dict]] = {"probe": [], "lightning": []}
    for r in range(args.repeats):
        for name, extra in (("probe", []), ("lightning", ["probe.enabled=false"])):
            runs[name].append(run_tlx(tmp / f"{name}{r}", *base, *extra))

    def med(name: str, get) -> float:
        return median([get(r) for r in runs[name]])

    probe_train = med("probe", lambda r: r["stages"][0]["seconds"])
    read = med("probe", lambda r: r["cache"]["read_s"])
    lookup = med("probe", lambda r: r["cache"]["lookup_s"])
    rows = {
        "cache read, probe runs (s, median)": read,
        "cache lookup incl. image hashes, probe runs (s, median)": lookup,
        "probe: training of all 16 candidates (s, median)": probe_train,
        "probe training / cache read": probe_train / read,
        "probe training / cache lookup": probe_train / lookup,
        "probe run: fit phase incl. Lightning validate + checkpoint (s)": med("probe", lambda r: r["timing"]["fit_s"]),
        "lightning loop: fit, 30 epochs, one setting (s, median)": med("lightning", lambda r: r["timing"]["fit_s"]),
        "lightning fit / probe training": med("lightning", lambda r: r["timing"]["fit_s"]) / probe_train,
        "probe run, whole process (s, median)": med("probe", lambda r: r["wall_s"]),
        "lightning run, whole process (s, median)": med("lightning", lambda r: r["wall_s"]),
        "probe: val/acc, test/acc": f"{runs['probe'][0]['metrics']['val/acc']:.4f}, "
        f"{runs['probe'][0]['metrics']['test/acc']:.4f}",
        "lightning: val/acc, test/acc": f"{runs['lightning'][0]['metrics']['val/acc']:.4f}, "
        f"{runs['lightning'][0]['metrics']['test/acc']:.4f}",
        "repeats": args.repeats,
    }
    report("probe", rows)


if __name__ == "__main__":
    main()
