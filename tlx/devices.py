"""Which accelerator a job runs on: one job per visible GPU in a parallel sweep, the CPU when there is none."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, ListConfig, open_dict

log = logging.getLogger(__name__)

_GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def visible_gpus() -> int:
    """Number of CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def assign_device(job_num: int, n_gpus: int) -> int | None:
    """The GPU index for sweep job ``job_num`` (round robin), or None for the CPU when there are no GPUs."""
    if job_num < 0:
        raise ValueError(f"job_num must be >= 0, got {job_num}")
    return job_num % n_gpus if n_gpus > 0 else None


def place_job(trainer_cfg: DictConfig, job_num: int, n_gpus: int) -> int | None:
    """Pin a one-device sweep job to GPU ``assign_device(job_num, n_gpus)`` by setting ``trainer.devices=[k]``.

    Only jobs asking for one device with a GPU-capable accelerator are pinned; an explicit choice (``devices=2``,
    ``accelerator=cpu``, DDP) is left alone. Returns the GPU index, or None when the job stays as configured.
    """
    k = assign_device(job_num, n_gpus)
    if k is None or trainer_cfg.get("accelerator") not in _GPU_ACCELERATORS or trainer_cfg.get("devices") != 1:
        return None
    with open_dict(trainer_cfg):
        trainer_cfg.accelerator = "gpu"
        trainer_cfg.devices = [k]
    log.info("sweep job %d runs on GPU %d of %d", job_num, k, n_gpus)
    return k


def describe(device: torch.device) -> str:
    """The device a run trained on, as results.json records it beside the timings: ``cuda:0 (NVIDIA H200)``,
    ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def torch_device(trainer_cfg: DictConfig) -> torch.device:
    """The torch device of the trainer's first device, for work done outside the Trainer (feature extraction)."""
    if not torch.cuda.is_available() or trainer_cfg.get("accelerator") not in _GPU_ACCELERATORS:
        return torch.device("cpu")
    devices = trainer_cfg.get("devices")
    return torch.device(f"cuda:{devices[0]}" if isinstance(devices, (list, ListConfig)) else "cuda")
