"""No tracebacks, anywhere (issue 9, item 3): every command, fed mutated models and bad
output paths, ends with exit 0, or with one line (two at most) and exit 1 (a failed check)
or 2 (bad input); -v adds the traceback."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from dynmodels import dynamic_cnn
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from drpopt.cli.main import app

runner = CliRunner()


def base() -> onnx.ModelProto:
    return dynamic_cnn(dims=(1, 3, 16, 16), constants=False)


def _wrong_dims(m):
    for t in m.graph.initializer:
        if t.name == "w1":
            t.CopyFrom(numpy_helper.from_array(np.ones((16, 5, 3, 3), np.float32), "w1"))


def _dangling(m):
    m.graph.node[1].input[0] = "nowhere"


def _negative_dim(m):
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = -4


def _zero_dim(m):
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 0


def _cycle(m):
    m.graph.node[0].input[0] = "r1"  # conv0 reads relu1, which depends on conv0


def _unknown_domain(m):
    m.graph.node[1].op_type = "Frobnicate"
    m.graph.node[1].domain = "com.acme"
    m.opset_import.append(helper.make_opsetid("com.acme", 1))


def _int_weights(m):
    for t in m.graph.initializer:
        if t.name == "w0":
            t.CopyFrom(numpy_helper.from_array(np.ones((16, 3, 3, 3), np.int64), "w0"))


def _no_outputs(m):
    del m.graph.output[:]


def _duplicate_output_name(m):
    m.graph.node[1].output[0] = "c0"


def _string_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING


def _huge_rank(m):
    shape = m.graph.input[0].type.tensor_type.shape
    for _ in range(20):
        shape.dim.add().dim_value = 1


MUTATIONS = {
    "wrong-dims": _wrong_dims,
    "dangling-input": _dangling,
    "negative-dim": _negative_dim,
    "zero-dim": _zero_dim,
    "cycle": _cycle,
    "unknown-domain": _unknown_domain,
    "int-weights": _int_weights,
    "no-outputs": _no_outputs,
    "duplicate-output": _duplicate_output_name,
    "string-input": _string_input,
    "huge-rank": _huge_rank,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "good.onnx"
    onnx.save(base(), str(good))
    paths = {"good": good}
    for name, mutate in MUTATIONS.items():
        m = base()
        mutate(m)
        paths[name] = root / f"{name}.onnx"
        paths[name].write_bytes(m.SerializeToString())
    data = good.read_bytes()
    paths["truncated"] = root / "truncated.onnx"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["garbage"] = root / "garbage.onnx"
    paths["garbage"].write_bytes(os.urandom(300))
    paths["empty"] = root / "empty.onnx"
    paths["empty"].write_bytes(b"")
    paths["directory"] = root / "dir.onnx"
    paths["directory"].mkdir()
    paths["missing"] = root / "missing.onnx"
    paths["root"] = root
    return paths


def commands(model: str, out: str, good: str) -> dict[str, list[str]]:
    return {
        "analyze": ["analyze", model],
        "analyze-json": ["analyze", model, "--json"],
        "prune": ["prune", model, "-r", "0.5", "-o", out],
        "prune-sparse": ["prune", model, "--target", "drpai", "-o", out],
        "run": ["run", model, "-p", "fold-batchnorm,cleanup,verify", "-o", out],
        "verify": ["verify", good, model],
        "verify-ref": ["verify", model, good, "--json"],
        "check": ["check", model],
        "report": ["report", model, "-o", out + ".html"],
        "report-compare": ["report", model, "--compare", good, "--json"],
    }


def assert_clean(result, args) -> None:
    shown = " ".join(args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{shown}: uncaught {result.exception!r}"
    )
    text = result.output + (result.stderr or "")
    assert "Traceback" not in text, f"{shown}: traceback\n{text}"
    if result.exit_code != 0:
        assert result.exit_code in (1, 2), f"{shown}: exit {result.exit_code}"
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1, f"{shown}: {lines}"
        others = [ln for ln in lines if not ln.startswith(("error:", "warning:"))]
        assert len(others) <= 1, f"{shown}: more than two lines\n{result.stderr}"


CASES = [*MUTATIONS, "truncated", "garbage", "empty", "directory", "missing"]


@pytest.mark.parametrize("case", CASES)
def test_every_command_on_a_mutated_model(corpus, case, tmp_path):
    out = str(tmp_path / "out.onnx")
    for name, args in commands(str(corpus[case]), out, str(corpus["good"])).items():
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert_clean(result, args)
        if case in ("truncated", "garbage", "empty", "directory", "missing"):
            assert result.exit_code == 2, f"{name}: {result.exit_code} {result.stderr}"


@pytest.mark.parametrize(
    "output", ["/proc/x.onnx", "/nonexistent-dir/x.onnx", "DIR", "/dev/null/x.onnx"]
)
def test_unwritable_or_special_outputs(corpus, output):
    out = str(corpus["root"]) if output == "DIR" else output
    good = str(corpus["good"])
    for args in (
        ["prune", good, "-o", out],
        ["run", good, "-p", "cleanup", "-o", out],
        ["report", good, "-o", out],
        ["demo", "--model", "se", "--save", out],
    ):
        result = runner.invoke(app, args)
        assert_clean(result, args)
        assert result.exit_code == 2, f"{args}: {result.exit_code} {result.output}"


def test_verbose_shows_the_traceback(corpus):
    args = ["prune", str(corpus["wrong-dims"]), "-o", str(corpus["root"] / "o.onnx")]
    quiet = runner.invoke(app, args)
    assert quiet.exit_code == 2 and "Traceback" not in quiet.stderr
    loud = runner.invoke(app, [*args, "-v"])
    assert loud.exit_code == 2 and "Traceback" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.parametrize("case", ["dangling-input", "cycle", "duplicate-output"])
def test_invalid_graphs_are_bad_input_before_any_pass(corpus, case, tmp_path):
    args = ["prune", str(corpus[case]), "-o", str(tmp_path / "o.onnx")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "not a valid ONNX model" in result.stderr


def test_one_line_in_a_real_process(corpus, tmp_path):
    """Native onnxruntime log lines must not add to the one line (a subprocess sees them)."""
    import subprocess
    import sys

    for args in (
        ["verify", str(corpus["good"]), str(corpus["wrong-dims"])],
        ["prune", str(corpus["wrong-dims"]), "-o", str(tmp_path / "o.onnx")],
        ["prune", str(corpus["good"]), "-o", "/proc/x.onnx"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "drpopt", *args], capture_output=True, text=True, check=False
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr


@pytest.mark.parametrize("where", ["output", "input"])
def test_an_input_or_output_typed_without_a_shape_is_no_bad_input(tmp_path, where):
    """onnx-graphsurgeon and ``make_tensor_value_info(name, dtype, None)`` write a graph
    input or output with a type and no shape; onnxruntime runs the model and onnx.checker
    alone refuses it. prune takes it (exit 0), its output passes the checker, and it runs
    like the input model at rate 0."""
    from deadchannels import run_model

    m = base()
    info = (m.graph.output if where == "output" else m.graph.input)[0]
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
    info.type.tensor_type.ClearField("shape")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(m)
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(m, src)
    shape = ["--input-shape", f"{m.graph.input[0].name}:1,3,16,16"] if where == "input" else []
    result = runner.invoke(app, ["prune", str(src), "-o", str(out), "--rate", "0", *shape])
    assert result.exit_code == 0, result.output
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned)
    feeds = {m.graph.input[0].name: np.random.default_rng(0).normal(size=(1, 3, 16, 16))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    ref, got = run_model(m, feeds)[0], run_model(pruned, feeds)[0]
    assert np.ptp(ref) > 0 and np.allclose(ref, got, rtol=1e-5, atol=1e-6 * np.ptp(ref))
    if where == "output":
        assert [d.dim_value for d in pruned.graph.output[0].type.tensor_type.shape.dim] == dims
    from drpopt.passes.interop import check_structure

    check_structure(m)  # no error, and the caller's model is left as it was
    assert not info.type.tensor_type.HasField("shape")
