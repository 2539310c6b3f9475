"""What a run prints: a quiet console by default, everything with ``verbose=true``.

A run shows tlx's own log lines (what it builds, and warnings about the user's data and settings: skipped images,
ignored files, a feature cache too big), the progress bars and the summary table. Hidden by default, because none of
it is about the user's data or anything the user set:

- deprecation notices from libraries (``DeprecationWarning``, ``PendingDeprecationWarning``, ``FutureWarning``), e.g.
  torch's ``isinstance(treespec, LeafSpec)`` seen through Lightning;
- Lightning's advice (``PossibleUserWarning``), e.g. a logging interval longer than an epoch, an unused ``srun``,
  few loader workers (tlx sizes them on purpose);
- Lightning's info lines: accelerators available, tips, ``Loading train_dataloader to estimate ...``,
  ``Trainer.fit stopped``, ``weights_only was not set``, the loading of the best checkpoint for the test (a resumed
  run says itself which checkpoint it continues from).

Other library warnings (plain ``UserWarning``) still show: they may concern a setting the user chose.
"""

from __future__ import annotations

import logging
import warnings

# Imported here, before the levels below are set: importing either package sets its own logger to INFO.
import lightning_fabric  # noqa: F401
import pytorch_lightning  # noqa: F401
from lightning_fabric.utilities.warnings import PossibleUserWarning

HIDDEN_WARNINGS: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    PossibleUserWarning,
)
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


def configure_console(verbose: bool) -> None:
    """Hide library deprecation notices, advice and info lines unless ``verbose``; with ``verbose`` change nothing
    (the libraries' own defaults: everything they print is shown)."""
    if verbose:
        return
    for category in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    for name in LIBRARY_LOGGERS:
        # Children (e.g. pytorch_lightning.utilities.rank_zero) have no level of their own and inherit this one.
        logging.getLogger(name).setLevel(logging.WARNING)
