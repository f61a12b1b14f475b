"""One rank of the distributed pruning test: ``torchrun --nproc_per_node=2 --standalone
tests/retrain/ddp_worker.py OUTDIR`` (CPU, gloo).

Each rank builds the same seeded model, wraps it in DistributedDataParallel, attaches a
gradual Pruner to ``model.module`` and trains on data of its own (rank-seeded), so the
weights would drift apart if gradients or masks were not synchronised. Two runs:

- ``l2``: the criterion scores identical weights (gradients synced by DDP);
- ``random``: each rank scores with its own seed, so only the Pruner's broadcast of rank 0's
  choice can make the masks agree.

Writes ``OUTDIR/rank{r}.pt``: per run its masks, parameters, keep sets, rate and step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from drpopt.retrain import Pruner
from drpopt.retrain.pruner import MASK_SUFFIX

STEPS = 8
BATCH = (4, 3, 12, 12)


class Net(nn.Module):
    """Conv-BN-ReLU, a residual conv-BN, a strided conv, a LayerNorm (masked by the Pruner's
    default ``masked_layernorm``), a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(self.norm(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


def train(rank: int, criterion: str) -> dict:
    """Builds, wraps, prunes and trains one model; returns what the test compares."""
    torch.manual_seed(0)
    model = Net()
    ddp = DistributedDataParallel(model)
    example = torch.randn(BATCH, generator=torch.Generator().manual_seed(0))
    pruner = Pruner(
        ddp.module,
        example,
        final_rate=0.5,
        schedule="cubic",
        end_step=6,
        frequency=2,
        criterion=criterion,
        keep_first=False,
        keep_last=False,
        seed=rank,  # only the ``random`` criterion uses it
    )
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(1000 + rank)
    rates = []
    for _ in range(STEPS):
        pruner.update()
        rates.append(pruner.rate)
        x = torch.randn(BATCH, generator=data)
        y = torch.randint(0, 10, (BATCH[0],), generator=data)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    state = model.state_dict()
    return {
        "masks": {k: v.clone() for k, v in state.items() if k.endswith(MASK_SUFFIX)},
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "keep": pruner.keep_sets(),
        "rates": rates,
        "step": pruner.step,
        "masked_norms": pruner.masked_norms,
    }


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        result = {criterion: train(rank, criterion) for criterion in ("l2", "random")}
        result["world_size"] = dist.get_world_size()
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
