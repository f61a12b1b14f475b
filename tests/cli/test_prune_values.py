"""Issue 10 D: `drpopt prune` hands its values to the library as values, not as a pipeline
string, so plan paths with ',' or ':' and several --exclude patterns work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.zoo import build

runner = CliRunner()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "r18.onnx"
    onnx.save(build("resnet18"), str(path))
    return path


def weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("plan_name", ["plan,v1.json", "run:1/p.json"])
def test_a_plan_path_with_comma_or_colon_is_applied(r18, tmp_path, plan_name):
    plan = tmp_path / plan_name
    plan.parent.mkdir(exist_ok=True)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first = runner.invoke(
        app,
        ["prune", str(r18), "--rate", "0.5", "--compact", "-o", str(a), "--plan-out", str(plan)],
    )
    assert first.exit_code == 0, first.output + first.stderr
    again = runner.invoke(app, ["prune", str(r18), "--plan", str(plan), "--compact", "-o", str(b)])
    assert again.exit_code == 0, again.stderr
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "args", [["--exclude", "layer1.*,layer2.*"], ["--exclude", "layer1.*", "--exclude", "layer2.*"]]
)
def test_several_exclude_patterns_leave_those_layers_dense(r18, tmp_path, args):
    out = tmp_path / "o.onnx"
    result = runner.invoke(
        app, ["prune", str(r18), "--rate", "0.5", "--sparse", "-o", str(out), *args]
    )
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out))
    convs = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    w = weights(out)
    dead = {
        name: int((np.abs(w[t]).reshape(w[t].shape[0], -1).sum(1) == 0).sum())
        for name, t in convs.items()
    }
    assert all(dead[n] == 0 for n in dead if n.startswith(("layer1.", "layer2.")))
    assert any(dead[n] > 0 for n in dead if n.startswith(("layer3.", "layer4.")))


def test_prune_builds_no_pipeline_string(r18, tmp_path, monkeypatch):
    """The CLI calls the API with values: parsing a pipeline string is never needed."""
    import drpopt.passes.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("prune parsed a pipeline string")

    monkeypatch.setattr(pipeline, "parse_pipeline", refuse)
    monkeypatch.setattr("drpopt.passes.parse_pipeline", refuse)
    result = runner.invoke(
        app, ["prune", str(r18), "--rate", "0.3", "-o", str(tmp_path / "o.onnx")]
    )
    assert result.exit_code == 0, result.stderr


def test_calib_opts_take_quoted_values(r18, tmp_path):
    """--calib-opts is read with the pipeline syntax: a bad key is named, one line, exit 2."""
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.zeros((2, 3, 64, 64), np.float32))
    result = runner.invoke(
        app,
        ["prune", str(r18), "-o", str(tmp_path / "o.onnx"), "--calib", str(calib),
         "--calib-opts", "batch=2:colour='a:b'"],
    )  # fmt: skip
    assert result.exit_code == 2 and "no argument 'colour'" in result.stderr


def test_the_rate_is_checked_once_as_a_float(r18, tmp_path, monkeypatch):
    """`--rate` reaches the mask pass as the float given, checked once (by the pass)."""
    import drpopt.passes.policy as policy

    seen: list = []
    real = policy.check_rate

    def counting(rate, what="rate"):
        if what == "rate":
            seen.append(rate)
        return real(rate, what)

    monkeypatch.setattr(policy, "check_rate", counting)
    rate = "0.30000000000000004"
    result = runner.invoke(app, ["prune", str(r18), "--rate", rate, "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.stderr
    assert seen == [float(rate)] and isinstance(seen[0], float)


def test_run_reads_a_quoted_plan_path(r18, tmp_path):
    plan = tmp_path / "run:1" / "plan,v1.json"
    plan.parent.mkdir()
    first = runner.invoke(
        app,
        [
            "prune",
            str(r18),
            "--rate",
            "0.5",
            "-o",
            str(tmp_path / "a.onnx"),
            "--plan-out",
            str(plan),
        ],
    )
    assert first.exit_code == 0, first.stderr
    out = tmp_path / "b.onnx"
    result = runner.invoke(
        app, ["run", str(r18), "-p", f"mask:plan='{plan}',apply-masks,verify", "-o", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    same = runner.invoke(app, ["verify", str(tmp_path / "a.onnx"), str(out)])
    assert same.exit_code == 0, same.output  # the plan was applied: same outputs
