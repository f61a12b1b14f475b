"""Plugins through entry points: a tiny package installed with pip into a temporary folder,
and the CLI run as a subprocess that sees it (passes, custom-op rules with and without
compaction, target profiles, broken and clashing entry points)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import channel_norm
import onnx
import pytest
from channel_scale import channel_scale_model
from deadchannels import random_feeds, run_model
from onnx import helper

from drpopt.zoo.builder import OnnxBuilder

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-drpopt"
version = "0.1.0"

[tool.setuptools]
packages = ["acme_drpopt"]

[tool.setuptools.package-data]
acme_drpopt = ["*.toml"]

[project.entry-points."drpopt.passes"]
count-nodes = "acme_drpopt:CountNodesPass"
cleanup = "acme_drpopt:FakeCleanupPass"
missing = "acme_missing_module:Nothing"

[project.entry-points."drpopt.rules"]
acme = "acme_drpopt:RULES"
acme-extra = "acme_drpopt:register"
acme-norm = "acme_drpopt.channel_norm:RULES"
bad-rules = "acme_drpopt:NOT_A_TARGET"

[project.entry-points."drpopt.targets"]
acme-npu = "acme_drpopt:ACME_NPU"
acme-toml = "acme_drpopt:TOML_PATH"
acme-tiny = "acme_drpopt:ACME_TINY"
generic = "acme_drpopt:FAKE_GENERIC"
wrong-type = "acme_drpopt:NOT_A_TARGET"
"""

PLUGIN = '''\
"""A plugin for drpopt's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from drpopt.ir.rules import OpRule, broadcast, same_axes
from drpopt.passes.base import Pass, PassResult
from drpopt.passes.targets import TargetProfile


@dataclass
class CountNodesPass(Pass):
    """Count the graph's nodes (writes the count to ``out`` when given)."""

    name: ClassVar[str] = "count-nodes"
    out: str = ""

    def call(self, model):
        model.meta["node_count"] = len(model.nodes)
        if self.out:
            Path(self.out).write_text(str(len(model.nodes)))
        return PassResult(model, False)


@dataclass
class FakeCleanupPass(Pass):
    """Pretends to be cleanup (must not replace the built-in)."""

    name: ClassVar[str] = "cleanup"


def _frobnicate(node, cg):
    broadcast(cg, node, node.inputs, node.outputs[0])


def _couple_channel_scale(node, cg):  # y = x * scale per channel: scale cut with them
    x, scale, y = node.input(0), node.input(1), node.outputs[0]
    same_axes(cg, node, x, y)
    cg.identity(cg.space(scale, 0), cg.space(x, 1), node)
    cg.role(cg.space(scale, 0), "follower", node)


def _compact_channel_scale(graph, node, kept):  # its shape attribute states the count
    count = kept.count(node.outputs[0], 1)
    if count is not None:
        node.attrs["shape"] = [1, count, 1, 1]


RULES = {
    "acme::Frobnicate": _frobnicate,  # coupling only: compact refuses to cut through it
    "acme::ChannelScale": OpRule(_couple_channel_scale, compact=_compact_channel_scale),
}


def register(register_rule):
    register_rule("acme::Twiddle", _frobnicate)
    register_rule("Relu", _frobnicate)  # a built-in: must stay


ACME_NPU = {
    "name": "acme-npu",
    "description": "Acme NPU: channels in fours, sparse output",
    "channels": {"align": 4, "min_channels": 4},
    "rate": {"default": 0.25},
    "layers": {"keep_first": False, "keep_last": True},
    "export": {"form": "sparse"},
}
ACME_TINY = TargetProfile(name="acme-tiny", description="Acme tiny NPU", align=2)
TOML_PATH = str(Path(__file__).parent / "acme_big.toml")
FAKE_GENERIC = {"name": "generic", "description": "not the real generic"}
NOT_A_TARGET = 42
'''

TOML = """\
name = "acme-big"
description = "Acme big NPU"
[channels]
align = 8
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a subprocess that sees the plugin package."""
    src = tmp_path_factory.mktemp("src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    pkg = src / "acme_drpopt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    (pkg / "acme_big.toml").write_text(TOML)
    (pkg / "channel_norm.py").write_text(Path(channel_norm.__file__).read_text())
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "250"
    return env


def drpopt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "drpopt", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def custom_op_path(tmp_path_factory) -> Path:
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 8, name="c1"))
    b.nodes.append(helper.make_node("Frobnicate", [y], ["fro"], name="fro", domain="acme"))
    b.shapes["fro"] = b.shapes[y]
    b.output(b.conv("fro", 4, name="out"))
    model = b.build(check=False, infer_shapes=False)
    model.opset_import.append(helper.make_opsetid("acme", 1))
    # shape inference knows nothing of the custom op: state its output's shape
    model.graph.value_info.append(
        helper.make_tensor_value_info("fro", onnx.TensorProto.FLOAT, [1, 8, 8, 8])
    )
    path = tmp_path_factory.mktemp("m") / "custom.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def scale_path(tmp_path_factory) -> Path:
    """A model with ``acme::ChannelScale`` (a model-local function onnxruntime runs)."""
    path = tmp_path_factory.mktemp("m") / "scale.onnx"
    onnx.save(channel_scale_model(), str(path))
    return path


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory) -> Path:
    b = OnnxBuilder()
    x = b.input("input", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 16, name="c1"))
    y = b.relu(b.conv(y, 16, name="c2"))
    b.output(b.conv(y, 4, name="out"))
    path = tmp_path_factory.mktemp("m") / "plain.onnx"
    onnx.save(b.build(), str(path))
    return path


def test_passes_lists_plugin_and_broken(plugin_env):
    done = drpopt(plugin_env, "passes")
    assert done.returncode == 0, done.stderr
    assert "count-nodes" in done.stdout
    assert "plugin: acme-drpopt" in done.stdout
    assert "broken plugin 'missing'" in done.stdout
    assert "Pretends to be cleanup" not in done.stdout  # the built-in stays
    assert "Remove dead nodes" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "missing" in line]
    assert len(warnings) == 1 and "skipped" in warnings[0]
    assert "clashes with a built-in pass" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_uses_plugin_pass(plugin_env, plain_path, tmp_path):
    out = tmp_path / "count.txt"
    done = drpopt(plugin_env, "run", plain_path, "-p", f"count-nodes:out={out},cleanup")
    assert done.returncode == 0, done.stderr
    assert "count-nodes" in done.stdout and "unchanged" in done.stdout
    assert out.read_text() == "5"  # 3 Conv + 2 Relu


def test_analyze_custom_op_rule(plugin_env, custom_op_path):
    before = drpopt(
        {**plugin_env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        "analyze",
        custom_op_path,
        "--json",
    )
    after = drpopt(plugin_env, "analyze", custom_op_path, "--json")
    assert before.returncode == 0 and after.returncode == 0, after.stderr
    old, new = json.loads(before.stdout), json.loads(after.stdout)
    assert old["totals"]["unsupported_ops"] == [{"op": "Frobnicate", "node": "fro"}]
    assert new["totals"]["unsupported_ops"] == []
    (group,) = [g for g in new["groups"] if "c1" in g["producers"]]
    assert group["prunable"], group
    assert "rule 'Relu' clashes" in after.stderr
    assert "'bad-rules' (drpopt.rules, acme-drpopt) skipped" in after.stderr
    strict = drpopt(plugin_env, "analyze", custom_op_path, "--strict")
    assert strict.returncode == 0, strict.stderr


def test_targets_list_and_prune(plugin_env, plain_path, tmp_path):
    done = drpopt(plugin_env, "targets")
    assert done.returncode == 0, done.stderr
    for word in (
        "acme-npu",
        "acme-big",
        "acme-tiny",
        "plugin acme-drpopt",
        "broken plugin 'wrong-type'",
    ):
        assert word in done.stdout, word
    assert "not the real generic" not in done.stdout
    assert "target 'generic' clashes" in done.stderr

    out = tmp_path / "pruned.onnx"
    done = drpopt(plugin_env, "prune", plain_path, "--target", "acme-npu", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["target"] == "acme-npu"
    assert summary["form"] == "sparse"  # the profile's export form, not generic's compact
    assert summary["rate"] == 0.25  # the profile's default rate


def test_no_plugins_no_warnings(plain_path):
    """Without the plugin on the path nothing changes and nothing is logged."""
    done = subprocess.run(
        [sys.executable, "-m", "drpopt", "passes"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "count-nodes" not in done.stdout and done.stderr == ""


def test_analyze_does_not_import_torch(plugin_env, custom_op_path):
    code = textwrap.dedent(
        f"""
        import sys
        from drpopt import analyze
        a = analyze({str(custom_op_path)!r})
        assert not a.unsupported, a.unsupported
        print('torch' in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=plugin_env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_prune_compacts_a_custom_op_through_its_plugin_rule(plugin_env, scale_path, tmp_path):
    """The plugin's ``OpRule`` couples the op and rewrites it: the compact model computes
    what the sparse model of the same plan computes (onnxruntime)."""
    _, compact = prune_both_forms(plugin_env, scale_path, tmp_path)
    weights = {t.name: tuple(t.dims) for t in compact.graph.initializer}
    assert weights["cs.scale"] == (8,) and weights["out.weight"][1] == 8


def test_prune_masks_and_compacts_a_custom_normalisation(plugin_env, tmp_path):
    """``acme::ChannelNorm`` reads every channel for its statistic: the plugin's rule
    couples it, compacts it (its ``channels`` attribute) and masks it (the sparse model
    gets its masked form), so ``prune --sparse`` and ``prune`` compute the same."""
    path = tmp_path / "norm.onnx"
    onnx.save(channel_norm.channel_norm_model(), str(path))
    sparse, compact = prune_both_forms(plugin_env, path, tmp_path)
    assert "MaskedChannelNorm" in {n.op_type for n in sparse.graph.node}
    (node,) = [n for n in compact.graph.node if n.domain == "acme"]
    assert node.op_type == "ChannelNorm" and node.attribute[0].i == 8
    assert [f.name for f in compact.functions] == ["ChannelNorm"]


def prune_both_forms(env, path: Path, tmp_path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``drpopt prune`` compact, then ``--sparse`` with its plan; asserts that both compute
    the same (onnxruntime, errors scaled by the sparse output's spread)."""
    compact, sparse, plan = tmp_path / "compact.onnx", tmp_path / "sparse.onnx", tmp_path / "p.json"
    done = drpopt(env, "prune", path, "-o", compact, "--plan-out", plan, "-q")
    assert done.returncode == 0, done.stderr
    done = drpopt(env, "prune", path, "--sparse", "--plan", plan, "-o", sparse, "-q")
    assert done.returncode == 0, done.stderr
    feeds = random_feeds(onnx.load(str(path)))
    sparse_model, compact_model = onnx.load(str(sparse)), onnx.load(str(compact))
    reference, got = run_model(sparse_model, feeds), run_model(compact_model, feeds)
    for ref, out in zip(reference, got, strict=True):
        spread = float(ref.max() - ref.min())
        assert spread > 1e-3 * max(1.0, float(abs(ref).max())), "degenerate reference"
        assert float(abs(ref - out).max()) / spread < 1e-5
    return sparse_model, compact_model


def test_prune_refuses_a_custom_op_whose_rule_cannot_compact(plugin_env, tmp_path):
    """A bare coupling function says nothing of compaction: one error line, no file."""
    model, out = tmp_path / "frob.onnx", tmp_path / "out.onnx"
    onnx.save(channel_scale_model("Frobnicate"), str(model))
    done = drpopt(plugin_env, "prune", model, "-o", out)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "compaction hook" in line]
    assert len(errors) == 1, done.stderr
    assert "acme::Frobnicate 'cs' has pruned channels" in errors[0]
    assert "Traceback" not in done.stderr and not out.exists()
