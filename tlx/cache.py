"""``python -m tlx.cache list|clear [--dir DIR]``: show or empty the frozen-feature cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlx.errors import plural
from tlx.features import clear, default_cache_dir, list_entries


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tlx.cache",
        description="Show or empty the frozen-feature cache (the backbone activations runs store and reuse).",
    )
    parser.add_argument("action", choices=["list", "clear"], help="list: one line per entry; clear: remove them all")
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: $TLX_CACHE_DIR or ~/.cache/tlx)")
    args = parser.parse_args(argv)
    root = (args.dir or default_cache_dir()).expanduser()
    if args.action == "clear":
        print(f"removed {plural(clear(root), 'entry', 'entries')} from {root}")
        return 0
    rows = list_entries(root)
    for r in rows:
        what = (
            "unreadable (damaged: a run extracts it again)"
            if r["unreadable"]
            else (f"{r['backbone']}  cut={r['cut']}  n={r['n']}  shape={r['shape']}")
        )
        print(f"{r['key'][:16]}  {r['bytes'] / 2**20:9.1f} MiB  {what}")
    print(f"{plural(len(rows), 'entry', 'entries')}, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
