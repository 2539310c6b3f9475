"""Lean checkpoints: the tensors training changed, plus what identifies the frozen pretrained ones.

With a frozen backbone, best.ckpt and last.ckpt would each hold the whole network although only the head (and the
unfrozen stages) trained. A lean checkpoint leaves the frozen tensors out and records under ``frozen`` where they come
from: the weights source and ``Backbone.weights_hash``, the hash of the pretrained tensors as loaded. Whatever loads
it (resume, testing the best checkpoint, ``tlx.predict``, ``tlx.export``) rebuilds the network with its pretrained
weights, takes the frozen tensors from there, and refuses weights whose hash differs. A checkpoint without ``frozen``
(full, as written before lean checkpoints existed) loads as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tlx.errors import ConfigError

log = logging.getLogger(__name__)

FROZEN = "frozen"  # the checkpoint entry that makes a checkpoint lean


def make_lean(checkpoint: dict[str, Any], fixed_keys: list[str], weights: str, weights_hash: str) -> None:
    """Leave ``fixed_keys`` out of ``checkpoint["state_dict"]`` and record where they come from.

    Args:
        checkpoint: a Lightning checkpoint dict, changed in place.
        fixed_keys: the ``state_dict`` keys training did not change (``Freeze.fixed_state_keys``, with the module's
            prefix).
        weights: the pretrained weights source (``Backbone.weights``).
        weights_hash: the hash of the pretrained weights as loaded (``Backbone.weights_hash``).
    """
    if weights == "random" or not fixed_keys:
        return  # random init cannot be rebuilt from a name: the checkpoint stays full
    state = checkpoint["state_dict"]
    for key in fixed_keys:
        del state[key]
    checkpoint[FROZEN] = {"weights": weights, "weights_hash": weights_hash, "keys": list(fixed_keys)}
    log.debug("lean checkpoint: %d frozen tensors left out (weights %s)", len(fixed_keys), weights)


def is_lean(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` needs its frozen tensors from the pretrained weights."""
    return FROZEN in checkpoint


def restore_frozen(
    checkpoint: dict[str, Any],
    state: Mapping[str, torch.Tensor],
    weights: str,
    weights_hash: str,
    path: str | Path | None = None,
) -> None:
    """Put the frozen tensors of a lean checkpoint back into its ``state_dict``; a full checkpoint stays as it is.

    Args:
        checkpoint: a Lightning checkpoint dict, changed in place.
        state: the ``state_dict`` (same key prefix) of the network rebuilt with its pretrained weights.
        weights: the rebuilt network's weights source (``Backbone.weights``).
        weights_hash: the hash of the rebuilt network's pretrained weights (``Backbone.weights_hash``).
        path: the checkpoint file, named in errors.

    Raises:
        ConfigError: the pretrained weights are not the ones the checkpoint was trained on, or the network lacks
            some of its frozen tensors.
    """
    frozen = checkpoint.get(FROZEN)
    if frozen is None:
        return
    name = path or "the checkpoint"
    if frozen["weights_hash"] != weights_hash:
        raise ConfigError(
            f"{name} was trained on frozen weights {frozen['weights']} (hash {frozen['weights_hash'][:12]}), but "
            f"backbone.weights now gives {weights} (hash {weights_hash[:12]}); put back the weights the run was "
            "trained on (or point backbone.weights at a file holding them), or train again"
        )
    missing = [k for k in frozen["keys"] if k not in state]
    if missing:
        raise ConfigError(
            f"{name} leaves out {len(missing)} frozen tensors the network does not have (first: {missing[0]}); "
            "use this run's own checkpoint"
        )
    checkpoint["state_dict"].update({k: state[k] for k in frozen["keys"]})
