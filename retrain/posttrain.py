"""One-shot pruning without (or before) fine-tuning, for the torch ``Pruner``: Taylor
importance, BatchNorm statistics recalibration, and least-squares reconstruction of the
layers that read pruned channels.

Rules:
- ``taylor_scores``: the first-order importance ``|w * dL/dw|`` of every masked producer,
  consumer and follower slice, accumulated over the given batches, summed per channel and
  normalised per member (as the ``score`` pass does with norms);
- ``prune_with_scores``: one-shot masks at ``rate`` from any per-group scores (the Pruner's
  allocation, alignment and dense layers apply), written through the Pruner's buffers;
- ``recalibrate_bn``: every BatchNorm's running mean and variance re-estimated on the
  batches (cumulative average, weights unchanged; the model's train/eval state restored);
- ``reconstruct_consumers``: each Conv2d/Linear that reads pruned channels, in module order,
  gets its kept input weights (and bias, when it has one) refitted by ridge least squares
  so its outputs on the batches match the dense model's, using the inputs of the already
  reconstructed model (im2col per conv group, grouped and depthwise included, positions
  subsampled); the masks are applied again afterwards, so pruned weights stay zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from drpopt.passes.score import member_norms

log = logging.getLogger(__name__)

Batch = Any  # (inputs, targets) for taylor_scores; inputs (a tensor or tuple) otherwise


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def taylor_scores(
    pruner: Any, batches: Iterable[Batch], loss_fn: Callable[[Any, Any], Any]
) -> dict[str, np.ndarray]:
    """Per group key, ``sum |w * grad|`` per channel over ``batches`` of (inputs, targets)."""
    import torch

    model = pruner.model
    params = dict(model.named_parameters())
    names = {
        m.tensor
        for g in pruner.groups
        for m in g.members
        if m.role in ("producer", "consumer", "follower") and m.tensor in params
    }
    acc = {n: torch.zeros_like(params[n]) for n in names}
    was_training = model.training
    model.eval()
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(_call(model, inputs), targets)
        loss.backward()
        with torch.no_grad():
            for n in names:
                if params[n].grad is not None:
                    acc[n] += (params[n] * params[n].grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    out = {}
    for g, key in zip(pruner.groups, pruner.keys, strict=True):
        total = np.zeros(g.size)
        for m in g.members:
            if m.tensor in acc:
                v = member_norms(acc[m.tensor].detach().cpu().numpy(), m, g.size, 1)
                mean = float(v.mean())
                total += v / mean if mean > 0 else v
        out[key] = total
    return out


def prune_with_scores(pruner: Any, scores: dict[str, np.ndarray], rate: float) -> None:
    """One-shot masks at ``rate`` from ``scores`` (higher means keep) for every group."""
    pruner._write_masks(pruner.choose(scores, rate))
    pruner.state[1] = rate
    pruner.apply_masks()


def recalibrate_bn(model: Any, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Re-estimates every BatchNorm's running statistics on ``batches``; returns how many
    batches were used."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
    model.eval()
    for bn in bns:
        bn.train()
    used = 0
    try:
        with torch.no_grad():
            for inputs in batches:
                if max_batches is not None and used >= max_batches:
                    break
                _call(model, inputs)
                used += 1
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
        for m, mode in modes.items():
            m.train(mode)
    return used


def _consumer_modules(pruner: Any) -> list[tuple[str, Any]]:
    import torch

    names = {
        m.tensor.rsplit(".", 1)[0]
        for g in pruner.groups
        for m in g.members
        if m.role == "consumer" and m.tensor and m.tensor.endswith(".weight")
    }
    out = []
    for name, mod in pruner.model.named_modules():
        if name in names and isinstance(mod, torch.nn.Conv2d | torch.nn.Linear):
            mask = getattr(mod, "weight" + "_drpopt_mask", None)
            if mask is not None and (mask == 0).any():
                out.append((name, mod))
    return out


def _features(mod: Any, x: Any, positions: int, gen: Any):
    """(per-group features (S, F_g), sample index) of the module's input ``x``."""
    import torch
    import torch.nn.functional as F

    if isinstance(mod, torch.nn.Linear):
        x2 = x.reshape(-1, x.shape[-1])
        return [x2], None
    pad = mod.padding
    if isinstance(pad, str):
        pad = tuple(d * (k - 1) // 2 for d, k in zip(mod.dilation, mod.kernel_size, strict=True))
    cols = F.unfold(x, mod.kernel_size, mod.dilation, pad, mod.stride)  # N, C*k*k, L
    n, f, length = cols.shape
    if length > positions:
        idx = torch.stack([torch.randperm(length, generator=gen)[:positions] for _ in range(n)])
        cols = torch.gather(cols, 2, idx[:, None, :].expand(n, f, positions))
    else:
        idx = torch.arange(length).expand(n, length)
    rows = cols.permute(0, 2, 1).reshape(-1, f)
    per = f // mod.groups
    return [rows[:, g * per : (g + 1) * per] for g in range(mod.groups)], idx


def _targets(mod: Any, y: Any, idx: Any):
    import torch

    if isinstance(mod, torch.nn.Linear):
        return y.reshape(-1, y.shape[-1])
    n, c = y.shape[:2]
    flat = y.reshape(n, c, -1)
    picked = torch.gather(flat, 2, idx[:, None, :].expand(n, c, idx.shape[1]))
    return picked.permute(0, 2, 1).reshape(-1, c)


def reconstruct_consumers(
    pruner: Any,
    dense: Any,
    batches: list[Any],
    ridge: float = 1e-2,
    positions: int = 64,
    seed: int = 0,
) -> list[str]:
    """Refits every consumer of pruned channels to the dense model's outputs; returns the
    names of the refitted modules. ``dense`` is an unpruned copy of the model."""
    import torch

    model = pruner.model
    dense_mods = dict(dense.named_modules())
    gen = torch.Generator().manual_seed(seed)
    done = []
    modes = (model.training, dense.training)
    model.eval()
    dense.eval()
    try:
        for name, mod in _consumer_modules(pruner):
            dmod = dense_mods[name]
            mask = mod.weight_drpopt_mask.detach()
            cout = dmod.weight.shape[0]
            groups = getattr(mod, "groups", 1)
            per_out = cout // groups
            flat_mask = mask.reshape(cout, -1)
            keeps = [flat_mask[g * per_out : (g + 1) * per_out].any(0) for g in range(groups)]
            pair = (model, mod, dense, dmod)
            grams, cross = _normal_equations(pair, batches, keeps, positions, gen)
            _refit(mod, dmod, keeps, grams, cross, ridge)
            pruner.apply_masks()
            done.append(name)
    finally:
        model.train(modes[0])
        dense.train(modes[1])
    return done


def _normal_equations(
    pair: tuple[Any, Any, Any, Any], batches: list[Any], keeps: list[Any], positions: int, gen
) -> tuple[list[Any], list[Any]]:
    """Per group of the consumer: the Gram matrix of its kept input features (plus a ones
    column) and their cross product with the dense module's outputs, over ``batches``.
    ``pair``: (pruned model, its module, dense model, the dense module)."""
    import torch

    model, mod, dense, dmod = pair
    groups = len(keeps)
    per_out = dmod.weight.shape[0] // groups
    grams: list[Any] = [None] * groups
    cross: list[Any] = [None] * groups
    seen: dict[str, Any] = {}
    h1 = mod.register_forward_hook(_store(seen, "x", lambda i, o: i[0]))
    h2 = dmod.register_forward_hook(_store(seen, "y", lambda i, o: o))
    try:
        with torch.no_grad():
            for inputs in batches:
                _call(model, inputs)
                _call(dense, inputs)
                feats, idx = _features(mod, seen["x"], positions, gen)
                target = _targets(mod, seen["y"], idx).double()
                for g in range(groups):
                    f = feats[g][:, keeps[g]].double()
                    a = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
                    t = target[:, g * per_out : (g + 1) * per_out]
                    gram, cr = a.T @ a, a.T @ t
                    grams[g] = gram if grams[g] is None else grams[g] + gram
                    cross[g] = cr if cross[g] is None else cross[g] + cr
    finally:
        h1.remove()
        h2.remove()
    return grams, cross


def _refit(mod: Any, dmod: Any, keeps: list[Any], grams, cross, ridge: float) -> None:
    """Writes the ridge solution of each group into ``mod``'s kept weights (and bias)."""
    import torch

    w_dense = dmod.weight.detach().double()
    cout = w_dense.shape[0]
    per_out = cout // len(keeps)
    has_bias = mod.bias is not None
    b_dense = dmod.bias.detach().double() if has_bias else torch.zeros(cout).double()
    new_w = torch.zeros_like(w_dense.reshape(cout, -1))
    new_b = b_dense.clone()
    for g in range(len(keeps)):
        rows = slice(g * per_out, (g + 1) * per_out)
        w0 = w_dense.reshape(cout, -1)[rows][:, keeps[g]]
        theta = _solve(grams[g], cross[g], w0, b_dense[rows], ridge, has_bias)
        new_w[rows][:, keeps[g]] = theta[:-1].T
        if has_bias:
            new_b[rows] = theta[-1]
    with torch.no_grad():
        mod.weight.copy_(new_w.reshape(mod.weight.shape).to(mod.weight))
        if has_bias:
            mod.bias.copy_(new_b.to(mod.bias))


def _store(seen: dict[str, Any], key: str, pick: Callable[[Any, Any], Any]):
    def hook(module: Any, inputs: Any, output: Any) -> None:
        seen[key] = pick(inputs, output).detach()

    return hook


def _solve(gram, cross, w0, b0, ridge: float, fit_bias: bool):
    import torch

    f = gram.shape[0] - 1
    lam = ridge * float(torch.diagonal(gram)[:f].mean()) + 1e-12 if f else 1e-12
    reg = torch.full((f + 1,), lam, dtype=gram.dtype)
    prior = torch.cat([w0.T, b0[None, :]], 0)
    if fit_bias:
        reg[f] = lam * 1e-6
    else:  # no bias parameter: pin the constant's weight to zero
        reg[f] = 1e12 * max(lam, 1.0)
        prior[f] = 0.0
    lhs = gram + torch.diag(reg)
    rhs = cross + reg[:, None] * prior
    return torch.linalg.solve(lhs, rhs)
