"""tlx: transfer learning for any timm backbone, driven by Hydra configs (``python -m tlx``)."""

import atexit
import gc
from pathlib import Path

from omegaconf import OmegaConf

_HERE = Path(__file__).resolve().parent
# The Hydra configs: conf/ beside the package in a checkout (and an editable install), tlx/conf where a wheel put them.
CONF = _HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf"

# At exit, the interpreter's last garbage collection walks every object torch, timm and Lightning created: about 2 s
# of a 9 s warm-cache run on 2 cores, spent after the run has finished. Freezing them first skips that walk (atexit
# handlers run last-registered first, so this one runs after every handler registered later, e.g. the trackers').
atexit.register(gc.freeze)


def _parallel_jobs() -> int:
    """``${tlx_gpus:}`` (conf/hydra/launcher/local_parallel.yaml): one parallel sweep job per visible GPU, at least
    one. Registered with the package, so that it is there wherever tlx's configs are composed and resolved (Hydra
    resolves the launcher's before any job runs); torch loads only when it is resolved."""
    from tlx.devices import visible_gpus

    return max(1, visible_gpus())


OmegaConf.register_new_resolver("tlx_gpus", _parallel_jobs, replace=True)
