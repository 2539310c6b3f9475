"""``python -m tlx.predict run_dir=<run> inputs=<file or folder>``: top-k labels and probabilities per image.

Everything comes from the run directory: the network is rebuilt from ``.hydra/config.yaml`` in the order ``tlx.run``
builds it, its weights from ``checkpoints/best.ckpt``, the class names from ``files.json`` and the transform from
the backbone's data config (the eval transform used for validation and test).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from tlx.errors import ConfigError, plural
from tlx.jsonfile import probe_writable, write_json_atomic
from tlx.results import read_results, resume_command
from tlx.sources import IMAGE_SUFFIXES, FileScan

# torch, timm and Lightning (about 5 s to import) load in the functions that use them, after the checks of the
# arguments and files: a mistyped option or run directory ends in about a second.
if TYPE_CHECKING:
    import torch

    from tlx.data import FileSamples
    from tlx.heads import Network

log = logging.getLogger("tlx.predict")  # (not __main__ under python -m tlx.predict)


@dataclass
class TrainedModel:
    """A trained network and what it needs to read images, loaded from a run directory.

    Attributes:
        net: backbone + head in eval mode; ``net(x)`` maps (B, 3, H, W) normalised images to logits (B, K).
        classes: class names, in label order.
        data_config: the backbone's data config (input_size, mean, std, interpolation, crop_pct, crop_mode).
        checkpoint: the checkpoint the weights came from.
        backbone: timm model name.
        channels_last: the run fed its images in NHWC (``channels_last`` of its config, on a CNN), the faster layout
            for convolutions on CPU (oneDNN) and GPU; ``probabilities`` does the same.
    """

    net: Network
    classes: list[str]
    data_config: dict[str, Any]
    checkpoint: Path
    backbone: str
    channels_last: bool = False


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir`` with ``~`` expanded, or a ConfigError when there is no such folder."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}; set run_dir=<a run directory of python -m tlx>")
    return run_dir


def load_run(run_dir: Path, checkpoint: str = "best") -> TrainedModel:
    """Rebuild the network of a finished (or interrupted) run and load its checkpoint.

    Args:
        run_dir: a ``python -m tlx`` run directory (it holds ``.hydra/config.yaml`` and ``files.json``).
        checkpoint: ``best``, ``last`` or a path to a ``.ckpt`` file.
    """
    run_dir = check_run_dir(run_dir)
    winner = (read_results(run_dir) or {}).get("auto", {}).get("winner_dir")
    if winner and checkpoint in ("best", "last"):  # an auto run's model is its winning candidate's
        run_dir = run_dir / winner
    config, files = run_dir / ".hydra" / "config.yaml", run_dir / "files.json"
    recorded = read_results(run_dir) or {}
    failed = recorded.get("status") == "failed" and not (run_dir / "checkpoints" / f"{checkpoint}.ckpt").is_file()
    if failed and checkpoint in ("best", "last"):  # (one that failed at its settings has no files.json either)
        raise ConfigError(
            f"the run in {run_dir} failed before it trained ({recorded.get('error')}); it has no model: fix that "
            "and train it again"
        )
    if not config.is_file() or not files.is_file():
        raise ConfigError(
            f"{run_dir} is not a tlx run directory (it needs .hydra/config.yaml and files.json); "
            "set run_dir=<a run directory of python -m tlx>"
        )
    if checkpoint in ("best", "last"):
        ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
        if not ckpt.is_file():
            raise ConfigError(
                f"no checkpoint at {ckpt}: the run has not finished an epoch; finish it with: {resume_command(run_dir)}"
            )
    else:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise ConfigError(
                f"checkpoint file not found: {ckpt}; use checkpoint=best, checkpoint=last or a .ckpt file"
            )
    import torch
    from hydra.utils import instantiate

    from tlx.checkpoints import is_lean, restore_frozen
    from tlx.heads import Network

    cfg = OmegaConf.load(config)
    classes = json.loads(files.read_text())["classes"]
    try:
        loaded = torch.load(ckpt, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict) or "state_dict" not in loaded and "frozen" not in loaded:
            raise ValueError("no state_dict in it")
    except Exception as e:  # pickle, zip or torch errors: torch's own advice (weights_only=False) is not the fix
        raise ConfigError(
            f"{ckpt} is not a checkpoint a tlx run wrote ({type(e).__name__}); use checkpoint=best, checkpoint=last "
            "or a .ckpt file from a run's checkpoints/"
        ) from e
    trained_on = loaded.get("classes")  # (checkpoints written before tlx kept them have none)
    if trained_on is not None and list(trained_on) != list(classes):
        raise ConfigError(
            f"{ckpt} was trained on other classes ({', '.join(trained_on)}) than {run_dir} has "
            f"({', '.join(classes)}); give the run_dir= of the run that wrote it"
        )
    # Same order as tlx.run (a reinit_last head rebuilds the backbone's tail). A lean checkpoint takes its frozen
    # tensors from the pretrained weights; a full one holds every tensor, so it needs none (the shapes do not depend
    # on them, and load_state_dict below is strict).
    try:
        backbone = instantiate(cfg.backbone) if is_lean(loaded) else instantiate(cfg.backbone, pretrained=False)
    except Exception as e:  # Hydra wraps the ConfigError of weights that are gone: its fix names the training option
        if not isinstance(e.__cause__, ConfigError):
            raise
        raise ConfigError(
            f"{run_dir} cannot rebuild its backbone: {str(e.__cause__).split(';')[0]}; its checkpoint leaves out "
            "the frozen weights, which come from there: put them back, or train the run again"
        ) from e
    head = instantiate(cfg.head)(backbone=backbone, num_classes=len(classes))
    net = Network(backbone, head)
    loaded.setdefault("state_dict", {})
    rebuilt = {f"net.{k}": v for k, v in net.state_dict().items()}
    restore_frozen(loaded, rebuilt, backbone.weights, backbone.weights_hash, ckpt)
    try:
        net.load_state_dict(
            {k.removeprefix("net."): v for k, v in loaded["state_dict"].items() if k.startswith("net.")}
        )
    except RuntimeError as e:  # missing, unexpected or differently shaped tensors
        detail = textwrap.shorten(str(e).splitlines()[-1], 160, placeholder="...")
        raise ConfigError(
            f"{ckpt} does not fit the network of {run_dir} ({detail}); use this run's own checkpoint"
        ) from e
    log.info("loaded %s (%s, %d classes)", ckpt, backbone.name, len(classes))
    channels_last = bool(cfg.get("channels_last")) and bool(net.chain)  # as tlx.run converts the network
    return TrainedModel(net.eval(), classes, backbone.data_config, ckpt.resolve(), backbone.name, channels_last)


def check_options(device: str, num_workers: Any, batch_size: int) -> None:
    """Options that can only be wrong, checked before anything loads."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(device)):
        raise ConfigError(f"device={device}: use auto, cpu, cuda or cuda:<index>")
    if not (num_workers == "auto" or isinstance(num_workers, int) and num_workers >= 0):
        raise ConfigError(f"num_workers={num_workers}: use auto or a number of processes >= 0")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: use batch_size >= 1")


def torch_device(device: str) -> str:
    """``auto``: cuda when there is one, else cpu; a CUDA device that is not there is a one-line error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is available here; use device=cpu (or auto)")
    return device


def writable_file(path: Path, key: str) -> Path:
    """``path``, once its folder exists and takes a new file there: found before the work, not after it."""
    try:
        probe_writable(path.parent)
    except OSError as e:
        raise ConfigError(f"cannot write {key}={path} ({e.strerror or e}); choose another {key}=") from e
    return path


def find_images(inputs: Path) -> list[Path]:
    """The image file ``inputs``, or every image file below the folder ``inputs`` (sorted), without what training
    leaves out: hidden files, OS metadata such as ``__MACOSX/``, Jupyter checkpoint copies (``tlx.sources.FileScan``).
    """
    inputs = Path(inputs).expanduser()
    if inputs.is_file():
        return [inputs]
    if not inputs.is_dir():
        raise ConfigError(f"inputs not found: {inputs}; set inputs=<an image file or a folder of images>")
    scan = FileScan()
    images = sorted(scan.images(inputs))
    left_out = scan.summary(inputs)  # (it was said only by training: predict left files out without a word)
    if not images:
        raise ConfigError(
            f"no images in {inputs} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
            f"{'; ' + left_out if left_out else ''}); set inputs=<an image file or a folder of images>"
        )
    if left_out:
        log.warning("%s", left_out)
    return images


def predict(
    model: TrainedModel,
    paths: list[Path],
    top_k: int | None = None,
    batch_size: int = 64,
    num_workers: int | str = 0,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Top-k classes of every readable image, decoded and transformed exactly as the run's validation images.

    Args:
        model: the trained model (``load_run``).
        paths: image files.
        top_k: classes per image; None: 3, or every class of a model with fewer.
        batch_size: images per forward pass.
        num_workers: loader processes, or ``auto``.
        device: where the network runs.

    Returns:
        One ``{"path", "labels", "probs"}`` record per readable image (most probable first), and the paths of the
        unreadable files that were skipped (each logged as a warning).
    """
    top_k = default_top_k(model) if top_k is None else top_k
    if not 1 <= top_k <= len(model.classes):
        raise ConfigError(
            f"top_k={top_k} but the model has {len(model.classes)} classes; use 1 <= top_k <= {len(model.classes)}"
        )
    from tlx.data import FileSamples

    probs, samples, skipped = probabilities(
        model, FileSamples(paths, [0] * len(paths)), batch_size, num_workers, device
    )
    top = probs.topk(top_k, dim=1)
    records = [
        {"path": str(path), "labels": [model.classes[j] for j in i], "probs": p}
        for path, p, i in zip(samples.paths, top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    return records, skipped


def probabilities(
    model: TrainedModel,
    samples: FileSamples,
    batch_size: int = 64,
    num_workers: int | str = 0,
    device: str = "cpu",
    where: Path | str = "the input",
) -> tuple[torch.Tensor, FileSamples, list[str]]:
    """Class probabilities of every readable image of ``samples``, decoded and transformed exactly as the run's
    validation images. ``where``: what holds them (a label file's paths that all miss are said to be relative to it).

    Returns:
        (N, K) probabilities on the CPU, the N readable samples (labels kept) in that order, and the paths of the
        unreadable files that were skipped (each logged as a warning).
    """
    import torch

    from tlx.data import ImageData
    from tlx.progress import progress

    data = ImageData(model.data_config, batch_size=batch_size, num_workers=num_workers, on_bad_image="skip")
    samples = data.samples["predict"] = data.check_images(samples, where)
    layout = torch.channels_last if model.channels_last else torch.contiguous_format
    net = model.net.to(device, memory_format=layout)
    out = []
    with torch.inference_mode():
        batches = progress(data.loader(data.dataset("predict")), "predicting", len(samples), lambda b: len(b[0]))
        for x, _ in batches:
            x = x.to(device).contiguous(memory_format=layout)  # (B, 3, H, W), stored as NHWC for channels_last
            out.append(net(x).softmax(dim=1).float().cpu())  # (B, K)
    return torch.cat(out), samples, data.bad_images


def default_top_k(model: TrainedModel) -> int:
    """3, or the number of classes of a model with fewer (a 2-class model has no third guess)."""
    return min(3, len(model.classes))


def write_predictions(path: Path, records: list[dict[str, Any]], top_k: int, meta: dict[str, Any]) -> None:
    """CSV (``path, label_1, prob_1, ...``) or JSON (``meta`` plus the records), chosen by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        write_json_atomic(path, {**meta, "predictions": records})
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"] + [f"{c}_{k}" for k in range(1, top_k + 1) for c in ("label", "prob")])
        for r in records:
            writer.writerow([r["path"]] + [v for pair in zip(r["labels"], r["probs"], strict=True) for v in pair])
    tmp.replace(path)


@dataclass
class _Args:
    run_dir: str = MISSING
    inputs: str = MISSING
    output: str = "predictions.csv"
    top_k: int | None = None  # None: 3, or every class of a model with fewer
    batch_size: int = 64
    num_workers: Any = "auto"  # auto: one loader process per core beyond the first, at most 8
    checkpoint: str = "best"
    device: str = "auto"


USAGE = """\
usage: python -m tlx.predict run_dir=<run dir> inputs=<image or folder> [key=value ...]

The top-k classes of each image, by a trained run's model (its best checkpoint), into a CSV or JSON file.

options:
  run_dir=      a run directory, outputs/runs/<date_time> (required)
  inputs=       an image file, or a folder searched for images below it (required)
  output=       predictions.csv; .csv: path, label_1, prob_1, ...; .json: the same with the run's metadata
  top_k=        classes per image (default 3, or every class of a model with fewer)
  batch_size=   images per forward pass (64)
  num_workers=  image decoding processes (auto)
  checkpoint=   best, last, or a .ckpt file (best)
  device=       auto, cpu, cuda, cuda:1, ... (auto: cuda when there is one)
"""


def parse_args(argv: list[str], schema: type, usage: str) -> Any:
    """``key=value`` arguments checked against the dataclass ``schema`` (unknown keys and bad types are errors);
    ``-h``/``--help`` prints ``usage`` and exits."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage, end="")
        sys.exit(0)
    base = OmegaConf.structured(schema)
    try:
        args = OmegaConf.merge(base, OmegaConf.from_cli(argv))
        missing = sorted(OmegaConf.missing_keys(args))
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}: give {' '.join(f'{k}=...' for k in missing)}")
        return OmegaConf.to_object(args)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown option '{e.full_key}'; the options are {', '.join(f'{k}=' for k in base)}") from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from e


def main(argv: list[str] | None = None) -> None:
    """Command line: write the predictions file and print where it went."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tlx.progress").setLevel(logging.INFO)  # where no bar is drawn: a line a minute on a long set
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, _Args, USAGE)
        if Path(args.output).suffix.lower() not in (".csv", ".json"):
            raise ConfigError(f"output={args.output}: use a .csv or .json file name")
        check_options(args.device, args.num_workers, args.batch_size)
        writable_file(Path(args.output), "output")
        check_run_dir(args.run_dir)  # before the inputs are listed (and what is left out of them said)
        if args.top_k is not None and args.top_k < 1:
            raise ConfigError(f"top_k={args.top_k}: use 1 or more (at most the model's number of classes)")
        images = find_images(Path(args.inputs))
        model = load_run(Path(args.run_dir), args.checkpoint)
        device = torch_device(args.device)
        top_k = default_top_k(model) if args.top_k is None else args.top_k
        records, skipped = predict(model, images, top_k, args.batch_size, args.num_workers, device)
        if not records:
            raise ConfigError(f"none of the images in {args.inputs} could be read ({len(skipped)} skipped)")
        meta = {
            "run_dir": str(Path(args.run_dir).resolve()),
            "checkpoint": str(model.checkpoint),
            "classes": model.classes,
            "skipped": skipped,
        }
        write_predictions(Path(args.output), records, top_k, meta)
    except ConfigError as e:
        print(f"tlx.predict: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{plural(len(records), 'prediction')} -> {args.output}"
        + (f" ({plural(len(skipped), 'unreadable file')} skipped)" if skipped else "")
    )


if __name__ == "__main__":
    main()
