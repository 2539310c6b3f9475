"""``python -m tlx.cache list|clear [--dir DIR]``: show or empty the frozen-feature cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlx.errors import plural
from tlx.features import clear, default_cache_dir, list_entries, size_text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tlx.cache",
        description="Show or empty the frozen-feature cache (the backbone activations runs store and reuse).",
    )
    parser.add_argument("action", choices=["list", "clear"], help="list: one line per entry; clear: remove them all")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="cache folder (default: $TLX_CACHE_DIR, else $XDG_CACHE_HOME/tlx, else ~/.cache/tlx)",
    )
    args = parser.parse_args(argv)
    root = (args.dir or default_cache_dir()).expanduser()
    if args.dir is not None and not root.is_dir():  # (the default folder is made by the first run that caches)
        parser.exit(
            2, f"python -m tlx.cache: error: no cache folder at {root} ({'a file' if root.exists() else 'none'})\n"
        )
    if args.action == "clear":
        removed, busy = clear(root)
        running = f"; left {plural(busy, 'entry', 'entries')} that running jobs are extracting" if busy else ""
        print(f"removed {plural(removed, 'entry', 'entries')} from {root}{running}")
        return 0
    rows = list_entries(root)
    for r in rows:
        what = (
            "unreadable (damaged: a run extracts it again)"
            if r["unreadable"]
            else (f"{r['backbone']}  cut={r['cut']}  n={r['n']}  shape={r['shape']}")
        )
        print(f"{r['key'][:16]}  {size_text(r['bytes']):>9}  {what}")
    print(f"{plural(len(rows), 'entry', 'entries')}, {size_text(sum(r['bytes'] for r in rows))} in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
