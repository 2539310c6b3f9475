"""``python -m tlx.export run_dir=<run>``: the trained network to TorchScript and ONNX, with its preprocessing.

Both files map normalised images (B, 3, H, W) at the run's input size to logits (B, K); ``meta.json`` beside them
holds the class names and how to get from a photo to that input (resize, centre crop, mean/std), as timm's eval
transform does. Softmax of the logits gives the probabilities ``tlx.predict`` writes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from tlx.errors import ConfigError, install_hint
from tlx.jsonfile import write_json_atomic
from tlx.predict import TrainedModel, load_run, parse_args, writable_file  # light: torch loads in load_run

log = logging.getLogger("tlx.export")  # (not __main__ under python -m tlx.export)

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}

USAGE = """\
usage: python -m tlx.export run_dir=<run dir> [key=value ...]

A trained run's network as TorchScript and ONNX (logits for normalised images at the run's input size), with
meta.json: class names and the preprocessing from a photo to that input.

options:
  run_dir=     a run directory, outputs/runs/<date_time> (required)
  formats=     [torchscript,onnx], or one of them
  out=         the folder to write to (default <run_dir>/export)
  checkpoint=  best, last, or a .ckpt file (best)
"""


def export_torchscript(model: TrainedModel, path: Path) -> Path:
    """Trace the network at the run's input size (TF-style "same" padding is fixed for that size)."""
    import torch

    example = torch.zeros(1, *model.data_config["input_size"])  # (1, 3, H, W)
    with warnings.catch_warnings():
        # Deprecated in favour of torch.export, but still the format any libtorch runtime loads.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        # Input-size checks (ViT's) become constants: right, the export is for the run's input size (meta.json).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model.net.eval(), example)
    traced.save(str(path))
    return path


def export_onnx(model: TrainedModel, path: Path, opset: int = 17) -> Path:
    """ONNX with a dynamic batch dimension, by torch's TorchScript-based exporter (needs only the onnx package)."""
    _check_onnx()
    import torch

    example = torch.zeros(1, *model.data_config["input_size"])  # (1, 3, H, W)
    with warnings.catch_warnings():
        # torch >= 2.9 defaults to the torch.export-based exporter, which needs onnxscript; the legacy one is enough.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # as in export_torchscript
        torch.onnx.export(
            model.net.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def preprocessing(data_config: dict[str, Any]) -> dict[str, Any]:
    """What timm's eval transform does to a photo before the network, spelled out for other runtimes."""
    from tlx.data.base import draft_size

    size = int(data_config["input_size"][-1])
    crop_pct = float(data_config.get("crop_pct", 1.0))
    return {
        # as tlx reads every image (tlx.data.FileSamples): phone photos store their pixels sideways and say so in EXIF
        # a JPEG is decoded at a reduced scale where the target is much smaller (tlx.data.FileSamples.load); full
        # decoding differs by a few units per pixel, and by up to 0.2 in the logits on phone-size photos
        "jpeg_draft": draft_size(data_config),
        "decode": "a JPEG at reduced scale (PIL: Image.draft('RGB', (jpeg_draft, jpeg_draft)) before reading it)",
        "orientation": "turn the photo upright by its EXIF orientation first (PIL: ImageOps.exif_transpose)",
        "input_size": list(data_config["input_size"]),
        "resize_shorter_side_to": math.floor(size / crop_pct),
        "interpolation": data_config["interpolation"],
        "center_crop": size,
        "crop_pct": crop_pct,
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "color": "8-bit RGB (16-bit grey /257; 32-bit and float grey as tlx.data.to_rgb scales them), scaled to "
        "[0, 1], then (x - mean) / std per channel",
        "layout": "NCHW float32",
    }


def _earlier_export(folder: Path) -> bool:
    """Whether ``folder`` holds what this command writes: a meta.json of tlx.export's."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"files", "preprocessing", "classes"} <= meta.keys()


def _check_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(
            f"ONNX export needs the onnx package, which is not installed: {install_hint('onnx', 'export')}; or "
            "export formats=[torchscript]"
        )


def export(run_dir: Path, formats: list[str], out: Path | None = None, checkpoint: str = "best") -> dict[str, Any]:
    """Export the run's network in ``formats`` into ``out`` (default ``<run_dir>/export``); returns meta.json."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"unknown export format(s) {unknown or formats}; use formats=[{','.join(FORMATS)}]")
    if "onnx" in formats:
        _check_onnx()  # before the model loads
    out = Path(out).expanduser() if out else Path(run_dir) / "export"
    # A folder that holds anything but an earlier export (its meta.json) is the user's: its files are not replaced
    if out.is_dir() and any(out.iterdir()) and not _earlier_export(out):
        raise ConfigError(f"out={out} holds other files and no earlier export; choose another out= folder")
    made = not out.exists()
    try:
        if Path(run_dir).is_dir():  # (a missing run dir: load_run's own line)
            writable_file(out / "meta.json", "out")  # before the model loads, not after
        model = load_run(run_dir, checkpoint)
        writers = {"torchscript": export_torchscript, "onnx": export_onnx}
        files = {fmt: writers[fmt](model, out / FORMATS[fmt]).name for fmt in formats}
    except BaseException:
        if made:  # a folder this export made holds nothing that looks like an export
            shutil.rmtree(out, ignore_errors=True)
        raise
    meta = {
        "classes": model.classes,
        "backbone": model.backbone,
        "checkpoint": str(model.checkpoint),
        "files": files,
        "output": "logits (B, K); softmax gives the class probabilities",
        "preprocessing": preprocessing(model.data_config),
    }
    earlier = json.loads((out / "meta.json").read_text()) if _earlier_export(out) else {}
    write_json_atomic(out / "meta.json", meta)
    for name in set(earlier.get("files", {}).values()) - set(files.values()):  # an earlier export's other formats:
        (out / name).unlink(missing_ok=True)  # of another model, which meta.json no longer describes
    log.info("exported %s to %s", ", ".join(files.values()), out)
    return meta


@dataclass
class _Args:
    run_dir: str = MISSING
    formats: Any = field(default_factory=lambda: list(FORMATS))  # a list, or one format name
    out: str | None = None
    checkpoint: str = "best"


def main(argv: list[str] | None = None) -> None:
    """Command line: export and print what was written where."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, _Args, USAGE)
        formats = [args.formats] if isinstance(args.formats, str) else list(args.formats)
        meta = export(Path(args.run_dir), formats, Path(args.out) if args.out else None, args.checkpoint)
    except ConfigError as e:
        print(f"tlx.export: error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    print(f"{', '.join(meta['files'].values())} and meta.json -> {out}")


if __name__ == "__main__":
    main()
