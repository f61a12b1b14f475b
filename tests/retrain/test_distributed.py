"""The Pruner under DistributedDataParallel: two CPU ranks (gloo) launched by torchrun end
with identical masks and parameters (see ``ddp_worker.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _distributed_available() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(
    not _distributed_available(), reason="torch.distributed with the gloo backend is unavailable"
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Runs the worker on two ranks; the result file of each."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # containers whose hostname resolves elsewhere
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(WORKER),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("criterion", ["l2", "random"])
def test_ranks_end_with_identical_masks_and_weights(ranks, criterion):
    a, b = ranks[0][criterion], ranks[1][criterion]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert a["masks"].keys() == b["masks"].keys() and a["masks"]
    for name, mask in a["masks"].items():
        assert torch.equal(mask, b["masks"][name]), name
    assert a["params"].keys() == b["params"].keys()
    for name, p in a["params"].items():
        assert torch.equal(p, b["params"][name]), name
    assert a["keep"] == b["keep"]
    assert a["masked_norms"] == b["masked_norms"]


@pytest.mark.parametrize("criterion", ["l2", "random"])
def test_masks_are_not_trivial(ranks, criterion):
    run = ranks[0][criterion]
    assert run["step"] == 8
    assert run["rates"][0] == 0.0 and run["rates"][-1] == pytest.approx(0.5)
    assert run["rates"] == sorted(run["rates"]) and len(set(run["rates"])) > 2  # gradual
    zeros = sum(int((m == 0).sum()) for m in run["masks"].values())
    ones = sum(int((m == 1).sum()) for m in run["masks"].values())
    assert zeros > 0 and ones > 0
    assert zeros + ones == sum(m.numel() for m in run["masks"].values())
    # the residual group (conv1 + conv2, 16 channels) and conv3's (32) are halved
    assert {k: len(v) for k, v in run["keep"].items()} == {
        "conv1.weight[0]@0": 8,
        "conv3.weight[0]@0": 16,
    }
    assert run["masked_norms"] == ["norm"]  # the LayerNorm counts conv3's kept channels
    assert int(run["masks"]["norm.weight_drpopt_mask"].sum()) == 16
    for name, p in run["params"].items():  # pruned weights are exactly zero
        mask = run["masks"].get(name + "_drpopt_mask")
        if mask is not None:
            assert not p[~mask].any(), name
