"""Post-training pruning benchmarks (run by hand): one-shot accuracy without fine-tuning, and
the cost of calibration and reconstruction on a ResNet-50.

    python benchmarks/bench_posttrain.py [--quick] [--seeds 0,1,2] [--rates 0.3,0.5,0.7]
    python benchmarks/bench_posttrain.py --resnet50 r50.onnx --size 128 --images 256

1. Accuracy. Two models trained here from a seed (nothing downloaded): the digits CNN the
   demo trains (scikit-learn's digits, 10 classes) and a small encoder-decoder segmenter on
   synthetic shapes (4 classes: background, square, disc, bar; mean IoU). Each is exported
   to ONNX (BatchNorm folded) and pruned one-shot at each rate, with no fine-tuning, five
   ways: magnitude (``l2``), magnitude + ``bias-correct``, ``activation``, ``activation`` +
   ``reconstruct``, ``reconstruction`` + ``reconstruct``; 256 training samples calibrate,
   the held-out test split scores. Mean and spread over seeds (a seed trains the model and
   draws the calibration samples). ``recovered`` is the share of the accuracy magnitude-only
   loses that activation + reconstruct keeps. The segmenter's output cosine to the dense
   model (test split) is shown too.
2. Cost. ``--resnet50 PATH`` (e.g. torchvision's, ``python /work/shared/corpus/materialize.py
   /work/shared/corpus/resnet50.onnx r50.onnx``): its input is made ``N x 3 x size x size``,
   ``--images`` crops of scikit-learn's two sample photos calibrate it, and the wall time
   and peak memory (max RSS of the process, against the RSS after loading) of the two data
   scores, of bias correction and of reconstruction at rate 0.5 are printed, each in a
   fresh process.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DRPOPT_NO_PROGRESS", "1")

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from drpopt.ir.to_onnx import to_onnx
from drpopt.passes import CalibrationData, PassManager, parse_pipeline
from drpopt.passes.activations import session
from drpopt.passes.context import context_of
from drpopt.passes.manager import load_graph

METHODS = {
    "magnitude": "score:criterion=l2,mask:rate={r},apply-masks",
    "magnitude+bias": "score:criterion=l2,mask:rate={r},apply-masks,bias-correct",
    "activation": "score:criterion=activation,mask:rate={r},apply-masks",
    "activation+recon": "score:criterion=activation,mask:rate={r},apply-masks,reconstruct",
    "recon-crit+recon": "score:criterion=reconstruction,mask:rate={r},apply-masks,reconstruct",
}


# ---- models -------------------------------------------------------------------------------
def export(model, example, path: Path) -> onnx.ModelProto:
    import torch

    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return onnx.load(str(path))


def digits(seed: int, epochs: int):
    from drpopt.retrain.demo import train_dense

    model, (xtr, ytr), (xte, yte) = train_dense(seed, epochs)
    return model, xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy()


def shapes_data(n: int, seed: int, size: int = 32):
    """Images with a square (class 1), a disc (2) and a bar (3) at random places, noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 3, size, size)).astype(np.float32)
    y = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for cls in rng.permutation([1, 2, 3]):
            r = rng.integers(3, 7)
            cy, cx = rng.integers(r, size - r, 2)
            if cls == 1:
                m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            elif cls == 2:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                m = (abs(yy - cy) <= 1) & (abs(xx - cx) <= 2 * r)
            color = rng.normal(0, 1, 3).astype(np.float32)
            x[i][:, m] += color[:, None] + 0.5 * cls
            y[i][m] = cls
    return x, y


def segmenter():
    import torch.nn as nn

    def block(i, o, s=1):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Sequential(*block(3, 24), *block(24, 24))
            self.enc2 = nn.Sequential(*block(24, 48, 2), *block(48, 48))
            self.enc3 = nn.Sequential(*block(48, 96, 2), *block(96, 96))
            self.up3 = nn.Upsample(scale_factor=2)
            self.dec2 = nn.Sequential(*block(96 + 48, 48))
            self.up2 = nn.Upsample(scale_factor=2)
            self.dec1 = nn.Sequential(*block(48 + 24, 24))
            self.head = nn.Conv2d(24, 4, 1)

        def forward(self, x):
            import torch

            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            e3 = self.enc3(e2)
            d2 = self.dec2(torch.cat([self.up3(e3), e2], 1))
            d1 = self.dec1(torch.cat([self.up2(d2), e1], 1))
            return self.head(d1)

    return Seg()


def train_segmenter(seed: int, steps: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xtr, ytr = shapes_data(1200, seed)
    xte, yte = shapes_data(300, seed + 1000)
    model = segmenter()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = gen.choice(len(xtr), 32, replace=False)
        loss = F.cross_entropy(model(torch.from_numpy(xtr[idx])), torch.from_numpy(ytr[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, xtr, ytr, xte, yte


# ---- metrics ------------------------------------------------------------------------------
def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return np.concatenate(
        [sess.run(None, {"input": x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    )


def miou(logits: np.ndarray, y: np.ndarray) -> float:
    pred = logits.argmax(1)
    ious = []
    for c in range(logits.shape[1]):
        inter = np.sum((pred == c) & (y == c))
        union = np.sum((pred == c) | (y == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def score(kind: str, logits: np.ndarray, y: np.ndarray) -> float:
    return miou(logits, y) if kind == "segmenter" else float((logits.argmax(1) == y).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def prune(dense: onnx.ModelProto, method: str, rate: float, calib: np.ndarray) -> onnx.ModelProto:
    graph = load_graph(dense)
    context_of(graph).calibration = CalibrationData({"input": calib}, batch_size=64)
    passes = parse_pipeline("fold-batchnorm," + METHODS[method].format(r=rate))
    return to_onnx(PassManager(passes)(graph).model)


# ---- part 1 -------------------------------------------------------------------------------
def accuracy_runs(kind: str, seeds, rates, quick: bool) -> dict:
    results: dict = {}
    for seed in seeds:
        if kind == "digits":
            model, xtr, _, xte, yte = digits(seed, 6 if quick else 15)
            example = xtr[:1]
        else:
            model, xtr, _, xte, yte = train_segmenter(seed, 150 if quick else 600)
            example = xtr[:1]
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            dense = export(model, torch.from_numpy(example), Path(tmp) / "dense.onnx")
        calib = xtr[np.random.default_rng(seed).choice(len(xtr), 256, replace=False)]
        ref = predict(dense, xte)
        results.setdefault(("dense", 0.0), []).append((score(kind, ref, yte), 1.0, 0.0))
        for rate in rates:
            for method in METHODS:
                start = time.perf_counter()
                pruned = prune(copy.deepcopy(dense), method, rate, calib)
                seconds = time.perf_counter() - start
                out = predict(pruned, xte)
                entry = (score(kind, out, yte), cosine(out, ref), seconds)
                results.setdefault((method, rate), []).append(entry)
    return results


def table(kind: str, results: dict, rates, methods=METHODS) -> Table:
    metric = "mean IoU" if kind == "segmenter" else "accuracy"
    t = Table(title=f"{kind}: one-shot, no fine-tuning ({metric}, mean ± std over seeds)")
    t.add_column("method")
    for r in rates:
        t.add_column(f"rate {r}", justify="right")
    t.add_column("cosine @0.3" if kind == "segmenter" else "time @0.5 (s)", justify="right")

    def fmt(vals):
        if len(vals) < 2:
            return f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"

    dense = [v[0] for v in results[("dense", 0.0)]]
    t.add_row("dense", *[fmt(dense)] * len(rates), "-")
    for method in methods:
        cells = [fmt([v[0] for v in results[(method, r)]]) for r in rates]
        if kind == "segmenter" and 0.3 in rates:
            extra = fmt([v[1] for v in results[(method, 0.3)]])
        elif 0.5 in rates and kind == "digits":
            extra = f"{statistics.mean(v[2] for v in results[(method, 0.5)]):.2f}"
        else:
            extra = "-"
        t.add_row(method, *cells, extra)
    if "activation+recon" not in methods:
        return t
    rec = []
    for r in rates:
        d = statistics.mean(dense)
        mag = statistics.mean(v[0] for v in results[("magnitude", r)])
        best = statistics.mean(v[0] for v in results[("activation+recon", r)])
        rec.append(f"{(best - mag) / (d - mag):.0%}" if d - mag > 1e-9 else "-")
    t.add_row("recovered", *rec, "")
    return t


# ---- torch -------------------------------------------------------------------------------
TORCH_METHODS = ("l2", "l2+bn-recal", "l2+reconstruct", "taylor", "taylor+reconstruct")


def torch_runs(seeds, rates, quick: bool) -> dict:
    """The Pruner one-shot on the digits CNN, then the torch post-training helpers."""
    import torch
    import torch.nn.functional as F

    from drpopt.retrain import Pruner
    from drpopt.retrain.demo import accuracy, train_dense
    from drpopt.retrain.posttrain import (
        prune_with_scores,
        recalibrate_bn,
        reconstruct_consumers,
        taylor_scores,
    )

    results: dict = {}
    for seed in seeds:
        base, (xtr, ytr), (xte, yte) = train_dense(seed, 6 if quick else 15)
        idx = torch.from_numpy(np.random.default_rng(seed).choice(len(ytr), 256, replace=False))
        batches = [xtr[idx[i : i + 64]] for i in range(0, 256, 64)]
        labelled = [(xtr[idx[i : i + 64]], ytr[idx[i : i + 64]]) for i in range(0, 256, 64)]
        results.setdefault(("dense", 0.0), []).append((accuracy(base, xte, yte), 1.0, 0.0))
        for rate in rates:
            for method in TORCH_METHODS:
                model = copy.deepcopy(base)
                pruner = Pruner(model, xtr[:1], final_rate=rate)
                if method.startswith("taylor"):
                    prune_with_scores(
                        pruner, taylor_scores(pruner, labelled, F.cross_entropy), rate
                    )
                else:
                    pruner.update()
                if method.endswith("bn-recal"):
                    recalibrate_bn(model, batches)
                if method.endswith("reconstruct"):
                    reconstruct_consumers(pruner, base, batches)
                results.setdefault((method, rate), []).append((accuracy(model, xte, yte), 1.0, 0.0))
    return results


# ---- part 2 -------------------------------------------------------------------------------
def sample_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` random crops of scikit-learn's two sample photos, ImageNet-normalised, NCHW."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, np.float32) / 255.0 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        p = photos[i % len(photos)]
        crop = int(rng.integers(size, min(p.shape[:2])))
        y0 = int(rng.integers(0, p.shape[0] - crop + 1))
        x0 = int(rng.integers(0, p.shape[1] - crop + 1))
        rows = y0 + (np.arange(size) * crop / size).astype(int)
        cols = x0 + (np.arange(size) * crop / size).astype(int)
        out[i] = ((p[rows][:, cols] - mean) / std).transpose(2, 0, 1)
    return out


def resized(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    inp = model.graph.input[0].type.tensor_type.shape.dim
    inp[0].dim_param = "N"
    inp[2].dim_value = inp[3].dim_value = size
    for o in model.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cost_stage(path: str, size: int, images: int, stage: str) -> dict:
    model = resized(onnx.load(path), size)
    crops = sample_crops(images, size)
    graph = load_graph(model)
    context_of(graph).calibration = CalibrationData({"input": crops}, batch_size=32)
    base = rss_mb()
    steps = "fold-batchnorm,score:criterion={c},mask:rate=0.5,apply-masks"
    if stage in ("activation", "reconstruction"):
        passes = parse_pipeline(steps.format(c=stage))
    else:
        passes = parse_pipeline(steps.format(c="l2") + "," + stage)
    start = time.perf_counter()
    result = PassManager(passes, time_passes=True)(graph)
    total = time.perf_counter() - start
    return {
        "stage": stage,
        "seconds": total,
        "passes": {r.spec: round(r.seconds, 2) for r in result.records},
        "rss_after_load_mb": base,
        "peak_rss_mb": rss_mb(),
    }


def cost_runs(path: str, size: int, images: int, console: Console) -> None:
    t = Table(title=f"ResNet-50 ({path}) at {size}x{size}, {images} calibration images, rate 0.5")
    for col in ("stage", "wall s", "per pass (s)", "RSS after load MB", "peak RSS MB"):
        t.add_column(col)
    for stage in ("activation", "reconstruction", "bias-correct", "reconstruct"):
        cmd = [sys.executable, __file__, "--cost-stage", stage, "--resnet50", path]
        cmd += ["--size", str(size), "--images", str(images)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        t.add_row(
            stage,
            f"{r['seconds']:.1f}",
            ", ".join(f"{k.split(':')[0]} {v}" for k, v in r["passes"].items() if v >= 0.05),
            f"{r['rss_after_load_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, shorter training")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rates", default="0.3,0.5,0.7")
    ap.add_argument("--models", default="digits,segmenter,torch")
    ap.add_argument("--resnet50", default=None, help="a ResNet-50 ONNX: measure cost only")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--cost-stage", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_stage:
        print(json.dumps(cost_stage(args.resnet50, args.size, args.images, args.cost_stage)))
        return
    console = Console()
    if args.resnet50:
        cost_runs(args.resnet50, args.size, args.images, console)
        return
    import torch

    torch.set_num_threads(1)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    for kind in args.models.split(","):
        start = time.perf_counter()
        if kind == "torch":
            results = torch_runs(seeds, rates, args.quick)
            console.print(table("torch Pruner, digits", results, rates, TORCH_METHODS))
        else:
            results = accuracy_runs(kind, seeds, rates, args.quick)
            console.print(table(kind, results, rates))
        console.print(f"({kind}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
