"""Kept parameters of small vision transformers at rate 0.5: the torch path against the ONNX path.

Run by hand (not a pytest test)::

    PYTHONPATH=. python benchmarks/vit_torch_path.py [--rate 0.5]

For torchvision's and timm's ViT layouts (``tests/ir/vit_blocks_torch.py``: 32 px, patch 4,
width 64, 4 heads, MLP 256, depth 4) it prints the compact/dense parameter ratio of

- the torch path: ``drpopt.retrain.Pruner`` one-shot at the rate, then ``export_onnx(...,
  compact=True)`` (verified against the masked torch model in onnxruntime), with
  ``masked_layernorm=False`` and by default (``masked_layernorm=True``);
- the ONNX path: ``drpopt.prune`` of the model's export at the same rate, compact form;

and the group sizes each torch run leaves whole (without masked LayerNorms, the
LayerNorm-normalised width).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import drpopt
from drpopt.api import PruneOptions
from drpopt.ir.from_torch import _export_onnx
from drpopt.retrain import Pruner, export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ir"))
import vit_blocks_torch as V

SIZE = dict(size=32, patch=4, dim=64, heads=4, hidden=256, depth=4)
MODELS = {"torchvision ViT": V.TorchvisionViT, "timm ViT": V.TimmViT}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name, cls in MODELS.items():
        torch.manual_seed(0)
        model = cls(**SIZE).eval()
        x = torch.randn(1, 3, 32, 32)
        proto, _ = _export_onnx(model, (x,), {}, 17)
        pruned = drpopt.prune(proto, PruneOptions(rate=args.rate, form="compact"))
        onnx_ratio = drpopt.analyze(pruned.proto).params / drpopt.analyze(proto).params
        torch_side = []
        for masked in (False, True):
            torch.manual_seed(0)
            model = cls(**SIZE).eval()
            pruner = Pruner(model, x, final_rate=args.rate, masked_layernorm=masked)
            pruner.update()
            with tempfile.TemporaryDirectory() as tmp:
                result = export_onnx(model, x, Path(tmp) / "compact.onnx", compact=True)
            locked = sorted({g.size for g in pruner.analysis.groups if not g.prunable})
            torch_side.append(f"{result.params / result.dense_params:.3f} (whole: {locked})")
        print(
            f"{name}: torch path with masked_layernorm=False {torch_side[0]}, "
            f"default (masked LayerNorms) {torch_side[1]}, "
            f"ONNX path {onnx_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
