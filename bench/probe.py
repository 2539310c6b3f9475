"""The cached head's training loop vs reading the cache (issue 9.3), on a warm cache.

Runs `python -m tlx +experiment=small_data` on the demo data with a warm feature cache, alternating:
- the linear probe (default): a grid of 16 (lr, weight decay) candidates trained at once in plain PyTorch,
- the Lightning loop it replaced (`probe.enabled=false`): one setting, 30 epochs.
Reports medians of results.json's own timings: the cache read (`cache.read_s`: loading the three entries), the whole
cache lookup but extraction (`cache.lookup_s`: hashing every image's bytes for the entries' keys, then the reads), the
head's training (the probe stage's seconds, or the Lightning fit), the whole fit phase and the whole run, plus val/test
accuracy of each.
Target: the probe spends no more on training than the run spends reading the cache.
Also the arithmetic floor of the probe's grid: its matrix products and AdamW updates alone, at the run's shapes, with
none of the bookkeeping (batch gathers, losses, early stopping), in this process on one thread as the probe runs. No
implementation of the same grid (candidates x epochs, validated every epoch) trains faster than that.

Usage: python bench/probe.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import median, report, run_tlx

from tlx.probe import Probe


def arithmetic_floor(n: int, m: int, n_f: int, k: int, g: int, epochs: int, batch: int, repeats: int = 7) -> float:
    """Median seconds of the probe's arithmetic alone: per step a (B, F+1) x (F+1, G*K) product, its transpose for
    the gradient and the AdamW update of the (F+1, G, K) weights; per epoch the validation product."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tlx.probe trains
    gen = torch.Generator().manual_seed(0)
    xb, vb = torch.randn(n, n_f + 1, generator=gen), torch.randn(m, n_f + 1, generator=gen)
    times = []
    for _ in range(repeats):
        w = torch.zeros(n_f + 1, g, k)
        w2, mom, var = w.view(n_f + 1, g * k), torch.zeros_like(w), torch.zeros_like(w)
        t0 = time.perf_counter()
        for _epoch in range(epochs):
            for i in range(0, n, batch):
                x = xb[i : i + batch]
                d = x @ w2  # the logits stand in for their own gradient: the same shapes, the same products
                grad = (x.t() @ d).view_as(w)
                mom.mul_(0.9).add_(grad, alpha=0.1)
                var.mul_(0.999).addcmul_(grad, grad, value=0.001)
                w.mul_(0.999)
                w.sub_(1e-3 * mom / var.sqrt().add_(1e-8))
            vb @ w2
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return median(times)


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
    first = runs["probe"][0]
    n, m, k = first["data"]["train"], first["data"]["val"], first["data"]["num_classes"]
    candidates, epochs = len(first["stages"][0]["table"]), first["stages"][0]["epochs"]
    floor = arithmetic_floor(n, m, 1280, k, candidates, epochs, Probe().batch_for(n))  # the conf's probe: defaults
    lookup = med("probe", lambda r: r["cache"]["lookup_s"])
    rows = {
        "cache read, probe runs (s, median)": read,
        "cache lookup incl. image hashes, probe runs (s, median)": lookup,
        "probe: training of all 16 candidates (s, median)": probe_train,
        "probe training / cache read": probe_train / read,
        "probe training / cache lookup": probe_train / lookup,
        f"arithmetic floor of the grid ({candidates} candidates x {epochs} epochs, s, median)": floor,
        "arithmetic floor / cache read": floor / read,
        "probe training / arithmetic floor": probe_train / floor,
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
