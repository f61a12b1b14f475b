"""`drpopt prune`, `drpopt run` and `drpopt passes` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from deadchannels import random_feeds, run_model
from onnx import numpy_helper
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.passes import PASSES
from drpopt.zoo import build

runner = CliRunner()


@pytest.fixture(scope="module")
def yolox(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "yolox.onnx"
    onnx.save(build("yolox_s_like"), str(path))
    return path


def weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_new_user_prunes_yolox_compact(yolox, tmp_path):
    """The command from the issue, as a subprocess: it runs, verifies, and the result loads
    in onnxruntime and passes onnx.checker."""
    out = tmp_path / "small.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "drpopt",
            "prune",
            str(yolox),
            "--rate",
            "0.7",
            "--compact",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "verified against the masked model: outputs match" in done.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    feeds = random_feeds(model)
    (y,) = run_model(model, feeds)
    assert y.shape == (1, 336, 25) and np.isfinite(y).all()
    assert sum(w.size for w in weights(out).values()) < 0.3 * sum(
        w.size for w in weights(yolox).values()
    )


def test_sparse_drpai_keeps_shapes_and_records_the_plan(yolox, tmp_path):
    out = tmp_path / "sparse.onnx"
    result = runner.invoke(
        app, ["prune", str(yolox), "--target", "drpai", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["form"] == "sparse" and summary["rate"] == 0.7
    dense, sparse = weights(yolox), weights(out)
    assert {k: v.shape for k, v in dense.items() if k in sparse} == {
        k: v.shape for k, v in sparse.items()
    }
    zeros = sum(int((v == 0).sum()) for v in sparse.values())
    assert zeros > 0.6 * sum(v.size for v in sparse.values())
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    plan = json.loads(meta["drpopt.plan"])
    assert plan["target"] == "drpai" and all(len(g["keep"]) % 8 == 0 for g in plan["groups"])
    assert json.loads(meta["drpopt.sparsity"])


def test_plan_out_then_plan_reproduces_the_model(yolox, tmp_path):
    plan = tmp_path / "plan.json"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first = runner.invoke(
        app,
        ["prune", str(yolox), "--rate", "0.5", "--compact", "-o", str(a), "--plan-out", str(plan)],
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        app, ["prune", str(yolox), "--plan", str(plan), "--compact", "-o", str(b)]
    )
    assert again.exit_code == 0, again.output
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "1.5"], "rate 1.5 is outside [0, 1)"),
        (["--rate", "-0.1"], "outside [0, 1)"),
        (["--target", "tpu"], "unknown target 'tpu'"),
        (["--criterion", "l7"], "is not one of l1, l2, bn-gamma, random"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(yolox, tmp_path, args, message):
    out = tmp_path / "o.onnx"
    result = runner.invoke(app, ["prune", str(yolox), "-o", str(out), *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_output_equal_to_input_is_refused(yolox):
    before = yolox.read_bytes()
    result = runner.invoke(app, ["prune", str(yolox), "--rate", "0.5", "-o", str(yolox)])
    assert result.exit_code == 2 and "is also the input" in result.stderr
    assert yolox.read_bytes() == before


def test_nothing_is_written_when_the_plan_does_not_fit(yolox, tmp_path):
    other = tmp_path / "r18.onnx"
    onnx.save(build("resnet18"), str(other))
    plan = tmp_path / "plan.json"
    ok = runner.invoke(
        app, ["prune", str(other), "-o", str(tmp_path / "x.onnx"), "--plan-out", str(plan)]
    )
    assert ok.exit_code == 0
    out = tmp_path / "never.onnx"
    bad = runner.invoke(app, ["prune", str(yolox), "--plan", str(plan), "-o", str(out)])
    assert bad.exit_code == 2 and "does not match this model" in bad.stderr
    assert not out.exists()


def test_passes_lists_every_pass():
    result = runner.invoke(app, ["passes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for p in PASSES:
        assert p.name in result.output


def test_run_with_timings_and_dumps(yolox, tmp_path):
    out, dumps = tmp_path / "r.onnx", tmp_path / "dumps"
    spec = "fold-batchnorm,score:criterion=l1,mask:rate=0.5,apply-masks,compact,cleanup,verify"
    result = runner.invoke(
        app,
        ["run", str(yolox), "-p", spec, "-o", str(out), "--time-passes", "--dump-dir", str(dumps)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Pass timings" in result.output
    names = sorted(p.name for p in dumps.iterdir())
    assert names[0] == "00-fold-batchnorm.onnx" and names[-1] == "06-verify.onnx"
    onnx.checker.check_model(onnx.load(str(out)))


def test_run_rejects_a_bad_pipeline_before_reading_the_model(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "missing.onnx"), "-p", "fold-bn"])
    assert result.exit_code == 2 and "unknown pass 'fold-bn'" in result.stderr


def test_a_model_with_external_data_is_pruned_to_one_with_external_data(tmp_path):
    """The weights of the output go beside it, as the input's were (issue 8, big models)."""
    import onnxruntime as ort

    from drpopt.zoo import build

    path = tmp_path / "ext.onnx"
    onnx.save_model(
        build("resnet18"),
        str(path),
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    out = tmp_path / "small.onnx"
    result = runner.invoke(app, ["prune", str(path), "-r", "0.5", "--compact", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "small.onnx.data").exists()
    model = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = np.zeros((1, 3, 64, 64), np.float32)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})
