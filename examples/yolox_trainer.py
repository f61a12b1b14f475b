"""YOLOX-style pruning and retraining with drpopt's drop-in for the DRP-AI Extension Pack.

The Renesas tutorial ("How to Prune Your Own Model") adds the Extension Pack to YOLOX's
``Trainer``; this script makes the same changes to a small self-contained trainer whose hooks
mirror YOLOX's (``before_train``, ``before_iter``, ``train_one_iter``, ``after_iter``,
``after_train``, ``resume_train``, ``save_ckpt``), on a YOLOX-s-like model and synthetic
data, so it runs on a CPU in seconds. Pruning uses only the drop-in imports below: a script
written for ``drpai_compaction_tool.pytorch`` differs in that import line alone.

Changes to YOLOX's trainer (marked ``# DRP-AI``):
- ``before_train``: after the model and optimizer are built, trace the model in training
  mode with a batch and its targets (``make_pruning_layer_list``) and attach
  ``Pruner(model, pruning_layer_list=..., final_pr=0.7)``;
- ``before_iter``: ``pruner.update()`` (one-shot pruning at the first iteration);
- ``resume_train``: ``Pruner(..., final_pr=0.0)`` before loading the pruned checkpoint, so
  its masks load with it and are never changed;
- ``ModelEMA`` copies the model with ``deepcopy_model`` instead of ``copy.deepcopy``;
- ``after_train``: ``get_model_info`` reports the sparsity of the saved model.

Usage::

    python examples/yolox_trainer.py --iters 20 --output-dir /tmp/yolox_prune
    python examples/yolox_trainer.py --iters 40 --output-dir /tmp/yolox_prune \\
        --resume /tmp/yolox_prune/last_ckpt.pth
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

from drpopt.retrain.drpai import (  # DRP-AI: the only line that differs from the Extension Pack
    Pruner,
    deepcopy_model,
    get_model_info,
    make_pruning_layer_list,
)
from drpopt.zoo.torch_models import yolox_s_like

log = logging.getLogger("yolox_trainer")


# ---- data ---------------------------------------------------------------------------------
class SyntheticDetection:
    """Deterministic random batches: images ``[B, 3, S, S]`` and YOLOX targets
    ``[B, max_objects, 5]`` of (class, cx, cy, w, h) in pixels, padding rows zero."""

    def __init__(
        self,
        batch_size: int,
        img_size: int,
        num_classes: int,
        max_objects: int = 4,
        seed: int = 0,
    ) -> None:
        self.batch_size = batch_size
        self.img_size = img_size
        self.num_classes = num_classes
        self.max_objects = max_objects
        self.seed = seed

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index`` (the same every time it is asked for)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
        b, s = self.batch_size, self.img_size
        imgs = torch.randn(b, 3, s, s, generator=gen)
        targets = torch.zeros(b, self.max_objects, 5)
        for i in range(b):
            n = int(torch.randint(1, self.max_objects + 1, (1,), generator=gen))
            cls = torch.randint(0, self.num_classes, (n,), generator=gen).float()
            wh = s / 8 + torch.rand(n, 2, generator=gen) * s / 3
            cxy = wh / 2 + torch.rand(n, 2, generator=gen) * (s - wh)
            targets[i, :n] = torch.cat([cls[:, None], cxy, wh], dim=1)
            # a bright box where each object is, so there is something to learn
            for c, (x, y), (w, h) in zip(cls, cxy, wh, strict=True):
                x0, y0 = int(x - w / 2), int(y - h / 2)
                imgs[i, int(c) % 3, y0 : y0 + int(h), x0 : x0 + int(w)] += 2.0
        return imgs, targets


# ---- YOLOX's ModelEMA, with deepcopy_model ------------------------------------------------
def is_parallel(model: torch.nn.Module) -> bool:
    return isinstance(
        model, torch.nn.parallel.DataParallel | torch.nn.parallel.DistributedDataParallel
    )


class ModelEMA:
    """YOLOX's ModelEMA; the only change is ``deepcopy_model`` in place of ``deepcopy``."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy_model(model.module if is_parallel(model) else model).eval()  # DRP-AI
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / 2000))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = model.module.state_dict() if is_parallel(model) else model.state_dict()
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v *= d
                    v += (1.0 - d) * msd[k].detach()


# ---- a minimal Trainer with YOLOX's hooks -------------------------------------------------
class Trainer:
    """YOLOX's Trainer loop, reduced to iterations: ``train()`` runs ``before_train``, then
    ``before_iter`` / ``train_one_iter`` / ``after_iter`` per iteration, then
    ``after_train``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.max_iter = args.iters
        self.start_iter = 0
        self.iter = 0
        self.device = "cpu"
        self.use_model_ema = not args.no_ema
        self.output_dir = Path(args.output_dir)
        self.model: Any = None
        self.optimizer: Any = None
        self.ema_model: ModelEMA | None = None
        self.losses: list[float] = []
        self.info: Any = None

    def train(self) -> None:
        self.before_train()
        try:
            for it in range(self.start_iter, self.max_iter):
                self.iter = it
                self.before_iter()
                self.train_one_iter()
                self.after_iter()
        finally:
            self.after_train()

    # hooks, overridden below
    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_iter(self) -> None: ...

    def train_one_iter(self) -> None: ...

    def after_iter(self) -> None: ...

    def resume_train(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


def get_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 5e-4) -> Any:
    """YOLOX's SGD: BN weights and biases without weight decay, nesterov momentum 0.9."""
    pg_bn, pg_weight, pg_bias = [], [], []
    for m in model.modules():
        if isinstance(getattr(m, "bias", None), torch.nn.Parameter):
            pg_bias.append(m.bias)
        if isinstance(m, torch.nn.BatchNorm2d):
            pg_bn.append(m.weight)
        elif isinstance(getattr(m, "weight", None), torch.nn.Parameter):
            pg_weight.append(m.weight)
    optimizer = torch.optim.SGD(pg_bn, lr=lr, momentum=0.9, nesterov=True)
    optimizer.add_param_group({"params": pg_weight, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": pg_bias})
    return optimizer


class PruningTrainer(Trainer):
    """The YOLOX trainer with the DRP-AI Extension Pack calls added (see the module doc)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.pruner: Pruner | None = None
        self.pruning_layer_list: Any = None
        self.train_loader = SyntheticDetection(
            args.batch_size, args.img_size, args.num_classes, seed=args.seed
        )

    def before_train(self) -> None:
        torch.manual_seed(self.args.seed)
        model = yolox_s_like(width=self.args.width, num_classes=self.args.num_classes)
        model.to(self.device)
        self.optimizer = get_optimizer(model, self.args.lr)
        if self.args.ckpt:  # dense weights from the initial training
            model.load_state_dict(torch.load(self.args.ckpt, map_location=self.device)["model"])

        # DRP-AI: trace in training mode with a batch and its targets, then take the masks
        model.train()
        imgs, targets = self.train_loader.batch(0)
        self.pruning_layer_list = make_pruning_layer_list(
            model, input_data={"x": imgs, "targets": targets}
        )
        model = self.resume_train(model)
        if self.pruner is None:
            self.pruner = Pruner(
                model, pruning_layer_list=self.pruning_layer_list, final_pr=self.args.final_pr
            )

        if self.use_model_ema:
            self.ema_model = ModelEMA(model, 0.9998)
            self.ema_model.updates = self.start_iter
        self.model = model
        log.info("training from iteration %d to %d", self.start_iter, self.max_iter)

    def before_iter(self) -> None:
        if self.pruner is not None:
            self.pruner.update()  # DRP-AI: updates the pruning parameters
        lr = self.args.lr * 0.5 * (1 + math.cos(math.pi * self.iter / max(self.max_iter, 1)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_one_iter(self) -> None:
        inps, targets = self.train_loader.batch(self.iter)
        outputs = self.model(inps.to(self.device), targets.to(self.device))
        loss = outputs["total_loss"]
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.ema_model is not None:
            self.ema_model.update(self.model)
        self.losses.append(float(loss.detach()))

    def after_iter(self) -> None:
        if (self.iter + 1) % self.args.print_interval == 0:
            log.info("iter %d/%d loss %.4f", self.iter + 1, self.max_iter, self.losses[-1])

    def after_train(self) -> None:
        self.save_ckpt("last")
        saved = self.saved_model()
        imgs, _ = self.train_loader.batch(0)
        saved.eval()
        self.info = get_model_info(saved, input_data=[imgs[:1]])  # DRP-AI: confirm pruning

    def saved_model(self) -> torch.nn.Module:
        return self.ema_model.ema if self.ema_model is not None else self.model

    def save_ckpt(self, name: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"{name}_ckpt.pth"
        state = {
            "iter": self.iter + 1 if self.max_iter > self.start_iter else self.start_iter,
            "model": self.saved_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, path)
        log.info("saved %s", path)
        return path

    def resume_train(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.args.resume:
            return model
        ckpt = torch.load(self.args.resume, map_location=self.device)
        # DRP-AI: the masks must exist before a pruned checkpoint is loaded; rate 0.0 keeps
        # them as loaded
        self.pruner = Pruner(model, pruning_layer_list=self.pruning_layer_list, final_pr=0.0)
        model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.start_iter = int(ckpt["iter"])
        log.info("resumed from %s at iteration %d", self.args.resume, self.start_iter)
        return model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="total training iterations")
    parser.add_argument("--resume", default=None, help="a checkpoint to resume from")
    parser.add_argument("--ckpt", default=None, help="dense weights to start pruning from")
    parser.add_argument("--output-dir", default="yolox_prune_outputs")
    parser.add_argument("--final-pr", type=float, default=0.7, help="pruning rate")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64, help="a multiple of 32")
    parser.add_argument("--width", type=float, default=0.25, help="YOLOX width multiplier")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--no-ema", action="store_true", help="train without ModelEMA")
    parser.add_argument("--print-interval", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> PruningTrainer:
    """Runs the trainer; returns it (its model, pruner, EMA and losses) for inspection."""
    args = parse_args(argv)
    trainer = PruningTrainer(args)
    trainer.train()
    return trainer


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(sys.argv[1:])
