"""One set of figures (issue 9, item 5): every weight element belongs to exactly one group
(the one producing its output channel), so per-group shares add up to 100% and prunable +
locked + ungrouped = the model's total; analyze --json, report --json, check --json and
prune's "before" agree on them for the same file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnx
import pytest
from dynmodels import dynamic_cnn
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.ir.analysis import analyze
from drpopt.ir.counting import node_macs
from drpopt.zoo import build

runner = CliRunner()
SHARE_KEYS = [f"{p}_{w}" for p in ("prunable", "locked", "ungrouped") for w in ("params", "macs")]
FIGURE_KEYS = ["params", "nonzero_params", "macs", "macs_nonzero", *SHARE_KEYS]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """x[1,3,8,8] -> conv0 (16) -> conv1 (16) -> conv2 (8) -> y: three groups (the last one
    locked by the graph output)."""
    path = tmp_path_factory.mktemp("chain") / "chain.onnx"
    onnx.save(dynamic_cnn(dims=(1, 3, 8, 8), constants=False), str(path))
    return path


def _json(args):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def test_a_group_owns_the_weights_of_the_channels_it_produces(chain):
    data = _json(["analyze", str(chain), "--json"])
    a = analyze(str(chain))
    macs = {n.input(1).name: node_macs(n) for n in a.graph.nodes if n.op_type == "Conv"}
    by_size = {}
    for g in data["groups"]:
        by_size.setdefault((g["size"], g["prunable"]), []).append(g)
    g0, g1 = by_size[(16, True)]
    (g_out,) = by_size[(8, False)]  # the graph output's channels
    assert (g0["params"], g0["macs"]) == (16 * 3 * 9 + 16, macs["w0"])
    assert (g1["params"], g1["macs"]) == (16 * 16 * 9 + 16, macs["w1"])
    assert (g_out["params"], g_out["macs"]) == (8 * 16 + 8, macs["w2"])
    # what pruning the whole group removes: its rows and the next layer's columns
    assert g0["removes_params"] == 16 * 3 * 9 + 16 + 16 * 16 * 9
    assert g0["removes_macs"] == macs["w0"] + macs["w1"]
    t = data["totals"]
    assert sum(g["params"] for g in data["groups"]) == t["params"] == 2904
    assert sum(g["macs"] for g in data["groups"]) == t["macs"]
    assert t["prunable_params"] == g0["params"] + g1["params"]
    assert t["locked_params"] == g_out["params"]
    assert t["removable_params"] == 16 * 3 * 9 + 16 + 16 * 16 * 9 + 16 + 8 * 16


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "yolox_s_like", "se", "densenet"])
def test_shares_add_up_on_zoo_models(name):
    from drpopt.passes.figures import group_shares

    a = analyze(build(name))
    s = group_shares(a)
    assert sum(s.owned_params.values()) + s.ungrouped_params == a.params
    assert abs(sum(s.owned_macs.values()) + s.ungrouped_macs - a.macs) <= len(a.groups)
    assert s.prunable_params + s.locked_params + s.ungrouped_params == a.params
    assert s.prunable_macs + s.locked_macs + s.ungrouped_macs == a.macs
    assert min(s.ungrouped_params, s.ungrouped_macs, s.locked_params, s.locked_macs) >= 0
    assert s.prunable_params <= s.removable_params <= a.params


def _percentages(text: str, label: str) -> list[float]:
    return [float(x) for x in re.findall(rf"^\s*{label}\s+\S+\s+([\d.]+)%", text, re.M)]


def test_analyze_text_shares_add_up_to_100(chain):
    text = runner.invoke(app, ["analyze", str(chain)], env={"COLUMNS": "200"}).stdout
    prunable = _percentages(text, "in prunable groups")
    locked = _percentages(text, "in locked groups")
    assert len(prunable) == len(locked) == 2  # parameters, MACs
    for p, lk in zip(prunable, locked, strict=True):
        assert abs(p + lk - 100.0) <= 0.11, text
    rows = re.findall(r"^│\s*\d+\s*│.*?│.*?│.*?│\s*\S+ \(([\d.]+)%\)\s*│", text, re.M)
    assert rows and abs(sum(map(float, rows)) - 100.0) <= 0.5, text
    assert "each weight counted once" in text


def test_same_figures_in_analyze_report_check_and_prune(chain, tmp_path):
    a = _json(["analyze", str(chain), "--json", "--count-zeros"])["totals"]
    plain = _json(["analyze", str(chain), "--json"])["totals"]  # reads no weight
    assert plain == {**a, "nonzero_params": None, "macs_nonzero": None}
    r = _json(["report", str(chain), "--json"])["figures"]
    c = _json(["check", str(chain), "--target", "generic", "--json"])["figures"]
    plan = tmp_path / "plan.json"
    p = runner.invoke(
        app,
        ["prune", str(chain), "-o", str(tmp_path / "p.onnx"), "--plan-out", str(plan), "--json"],
    )
    assert p.exit_code == 0, p.output
    summary = json.loads(p.stdout)
    before = summary["before"]
    for key in FIGURE_KEYS:
        assert a[key] == r[key] == c[key] == before[key], key
    saved = json.loads(plan.read_text())
    assert summary["eligible_channels"] == saved["settings"]["eligible_channels"]
    assert summary["eligible_channels"] == sum(g["size"] for g in saved["groups"])
    text = runner.invoke(
        app, ["prune", str(chain), "-o", str(tmp_path / "q.onnx")], env={"COLUMNS": "200"}
    ).stdout
    pp = 100 * a["prunable_params"] / a["params"]
    assert f"in prunable groups {pp:.1f}%" in text


REC = Path(
    os.environ.get(
        "DRPOPT_PPOCR_REC",
        "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/rapidocr_onnxruntime/"
        "models/ch_PP-OCRv4_rec_infer.onnx",
    )
)


@pytest.mark.skipif(not REC.is_file(), reason="PP-OCR rec model (rapidocr-onnxruntime) absent")
def test_ppocr_rec_prunable_and_locked_shares_add_up():
    """The issue's case: rec's MACs read 'in prunable groups 100%' (the union of what
    prunable groups touch) while a locked group carried 22.5% of the parameters."""
    data = _json(["analyze", str(REC), "--input-shape", "x:1,3,48,320", "--json"])
    t = data["totals"]
    for what in ("params", "macs"):
        parts = [t[f"{p}_{what}"] for p in ("prunable", "locked", "ungrouped")]
        assert sum(parts) == t[what] and min(parts) >= 0
        assert sum(g[what] for g in data["groups"]) <= t[what]
    assert t["locked_params"] > 0.2 * t["params"]  # the locked CTC head, stated as such
    assert t["prunable_macs"] < 0.99 * t["macs"]


def test_sparse_prune_counts_the_same_parameters_before_and_after(chain, tmp_path):
    """A sparse model keeps every tensor: the same parameters and dense MACs before and
    after (the issue's prune --sparse counted all parameters before and only Conv/Gemm
    weights after); zeros show in nonzero weights and zeros-skipped MACs, in the report too."""
    out = tmp_path / "s.onnx"
    p = runner.invoke(app, ["prune", str(chain), "--sparse", "-o", str(out), "--json"])
    assert p.exit_code == 0, p.output
    s = json.loads(p.stdout)
    assert s["after"]["params"] == s["before"]["params"]
    assert s["after"]["macs"] == s["before"]["macs"]
    assert s["after"]["nonzero_params"] < s["before"]["nonzero_params"]
    assert s["after"]["macs_nonzero"] < s["after"]["macs"]
    html = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(out), "-o", str(html)]).exit_code == 0
    page = html.read_text()
    skipped = re.search(r"<th>MACs \(zeros skipped\)</th><td class=\"n\" title=\"(\d+)\"", page)
    assert skipped and int(skipped.group(1)) == s["after"]["macs_nonzero"]


def _shared_weight_model() -> onnx.ModelProto:
    """x -> conv(w) -> relu -> conv(w) -> y: one weight tensor read by two layers."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shared_weight_counts_once_everywhere(tmp_path):
    """prune and report disagreed on a file's parameters (1.17M vs 1.16M): one counted a
    tensor shared by two layers twice."""
    path = tmp_path / "shared.onnx"
    onnx.save(_shared_weight_model(), str(path))
    a = _json(["analyze", str(path), "--json"])["totals"]
    r = _json(["report", str(path), "--json"])["figures"]
    c = _json(["check", str(path), "--target", "generic", "--json"])["figures"]
    assert a["params"] == r["params"] == c["params"] == 4 * 4 * 9
    assert a["macs"] == r["macs"] == 2 * 4 * 4 * 9 * 64
    assert a["prunable_params"] + a["locked_params"] + a["ungrouped_params"] == a["params"]
    assert a["prunable_macs"] + a["locked_macs"] + a["ungrouped_macs"] == a["macs"]


@pytest.mark.parametrize("seed", range(12))
def test_owned_counts_match_a_brute_force_count(seed):
    """The sorting count of `_owned_counts` against materialising every element's owner."""
    import numpy as np

    from drpopt.passes.figures import ROLE_RANK, _covered, _owned_counts

    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 7, size=int(rng.integers(1, 5))))
    n = 6  # five groups and "none"
    members = []
    for _ in range(int(rng.integers(0, 6))):
        axis = int(rng.integers(0, len(shape)))
        lo = int(rng.integers(0, shape[axis]))
        hi = int(rng.integers(lo + 1, shape[axis] + 1))
        members.append(
            (axis, int(rng.integers(0, len(ROLE_RANK))), int(rng.integers(0, 5)), lo, hi)
        )
    ndim = len(shape)
    expect = np.zeros(n, dtype=np.int64)
    covered = 0
    for index in np.ndindex(*shape):
        keys = [
            (rank * ndim + axis) * n + gi
            for axis, rank, gi, lo, hi in members
            if lo <= index[axis] < hi
        ]
        expect[min(keys) % n if keys else n - 1] += 1
        covered += bool(keys)
    assert _owned_counts(shape, members, n).tolist() == expect.tolist()
    assert _covered(shape, members) == covered
