"""Defects a new user met on real models (h35's tour of the CLI), one regression test each."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.ir.from_onnx import from_onnx
from drpopt.passes import PassManager, SparsifyPass
from drpopt.passes.check import check_model
from drpopt.passes.targets import get_target

runner = CliRunner()


def _conv_chain(*weights: np.ndarray) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Relu ... -> y (1x1 convs, 8x8 input)."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        x = f"c{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights[0].shape[1], 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, weights[-1].shape[0], 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _small_row_chain(seed: int) -> onnx.ModelProto:
    """Three convs; the middle one has an output channel of small weights (every one below
    the layer's median magnitude)."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=shape).astype(np.float32) for shape in [(16, 8), (16, 16), (8, 16)]]
    ws[1][3] *= 1e-3
    return _conv_chain(*(w[:, :, None, None] for w in ws))


def _dead_rows(graph) -> dict[str, list[int]]:
    out = {}
    for node in graph.nodes:
        if node.op_type == "Conv":
            w = np.asarray(node.inputs[1].const)
            rows = (w != 0).reshape(w.shape[0], -1).any(axis=1)
            out[node.name] = np.flatnonzero(~rows).tolist()
    return out


def test_single_weight_pattern_never_removes_a_kept_channel():
    """drpai's 50% of single weights by magnitude zeroed a kept channel whose weights were
    all small (MobileNetV2: a layer kept 39 of 144 channels), so `prune --target drpai`
    wrote a model that `check --target drpai` failed as misaligned."""
    graph = from_onnx(_small_row_chain(0))
    PassManager([SparsifyPass(target="drpai")])(graph)
    assert _dead_rows(graph) == {"conv0": [], "conv1": [], "conv2": []}
    report = check_model(graph, get_target("drpai"), min_sparsity=0.0)
    assert report.layers and not any(layer.misaligned for layer in report.layers)
    assert report.sparsity > 0.45  # the pattern still zeroes about half


def test_block_pattern_never_removes_a_kept_channel():
    graph = from_onnx(_small_row_chain(1))
    PassManager([SparsifyPass(granularity="block", block=4, rate=0.5)])(graph)
    assert _dead_rows(graph) == {"conv0": [], "conv1": [], "conv2": []}


def _biased_conv(tmp_path, zero: bool, anchors: bool = False) -> str:
    """x -> Conv(w, b) -> y; with ``zero`` the weight is zero, so y is the bias for every
    input; with ``anchors`` a second output that never depends on the input."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32) * (0 if zero else 1)
    b = rng.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if anchors:
        inits.append(numpy_helper.from_array(rng.normal(size=(1, 6)).astype(np.float32), "a0"))
        nodes.append(helper.make_node("Identity", ["a0"], ["anchors"], name="anchors"))
        outputs.append(helper.make_tensor_value_info("anchors", TensorProto.FLOAT, [1, 6]))
    graph = helper.make_graph(
        nodes,
        "biased",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        outputs,
        inits,
    )
    path = tmp_path / f"biased_{zero}_{anchors}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_verify_refuses_a_reference_that_ignores_its_input(tmp_path):
    """A collapsed reference (a bias alone reaches the output: different per channel, so its
    spread is not zero) passed `verify` against itself: nothing was checked."""
    collapsed = _biased_conv(tmp_path, zero=True)
    r = runner.invoke(app, ["verify", collapsed, collapsed])
    assert r.exit_code == 1, r.output
    assert "same for every input sample" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    live = _biased_conv(tmp_path, zero=False, anchors=True)  # one constant output is fine
    assert runner.invoke(app, ["verify", live, live]).exit_code == 0
    lone = runner.invoke(app, ["verify", collapsed, collapsed, "--samples", "1"])
    assert lone.exit_code == 0  # one sample cannot tell


def test_prune_plan_errors_name_the_option_and_come_before_any_work(tmp_path, zoo_models):
    """`--plan` with `--rate` said "rate have no effect with --plan (plan=)"; a missing or
    malformed plan was read only after scoring, its error prefixed by pipeline text
    ("pass 'mask:plan=...' failed after score"); a plan listing a channel twice was said to
    keep channels "outside 0..N"."""
    model = tmp_path / "m.onnx"
    onnx.save(zoo_models["resnet18"], model)
    out = str(tmp_path / "o.onnx")
    plan = tmp_path / "plan.json"
    made = runner.invoke(
        app, ["prune", str(model), "-q", "-r", "0.5", "--plan-out", str(plan), "-o", out]
    )
    assert made.exit_code == 0, made.output
    both = runner.invoke(app, ["prune", str(model), "--plan", str(plan), "-r", "0.5", "-o", out])
    assert both.exit_code == 2
    assert "rate has no effect with --plan:" in both.stderr and "plan=" not in both.stderr
    for text in ["{bad", "[]"]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        r = runner.invoke(app, ["prune", str(model), "--plan", str(bad), "-o", out])
        assert r.exit_code == 2 and "failed after" not in r.stderr, r.stderr
    missing = runner.invoke(
        app, ["prune", str(model), "--plan", str(tmp_path / "no.json"), "-o", out]
    )
    assert missing.exit_code == 2 and "no such plan file" in missing.stderr
    assert "failed after" not in missing.stderr
    data = json.loads(plan.read_text())
    group = next(g for g in data["groups"] if len(g["keep"]) > 1)
    group["keep"] = [group["keep"][0]] * 2
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(data))
    r = runner.invoke(app, ["prune", str(model), "--plan", str(twice), "-o", out])
    assert r.exit_code == 2 and "twice" in r.stderr and "outside" not in r.stderr, r.stderr


def test_exclude_typo_shows_layer_names(tmp_path):
    """The hint of an --exclude that matches nothing named the graph's first nodes
    (`Identity_70, ...` on torchvision's MobileNetV2), not layers a user would exclude."""
    model = _small_row_chain(3)
    ident = helper.make_node("Identity", ["x"], ["x_id"], name="Identity_0")
    model.graph.node.insert(0, ident)
    model.graph.node[1].input[0] = "x_id"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    r = runner.invoke(
        app, ["prune", str(path), "--exclude", "nope*", "-o", str(tmp_path / "o.onnx")]
    )
    assert r.exit_code == 2 and "names look like conv0, conv1, conv2" in r.stderr, r.stderr


def test_quiet_and_verbose_before_the_command(tmp_path):
    """`drpopt -q prune ...` (as git takes its flags) was a usage error: no such option."""
    path = tmp_path / "m.onnx"
    onnx.save(_small_row_chain(4), path)
    quiet = runner.invoke(app, ["-q", "analyze", str(path)])
    assert quiet.exit_code == 0 and quiet.stdout == "", quiet.output
    loud = runner.invoke(app, ["analyze", str(path)])
    assert loud.exit_code == 0 and "analysed" in loud.stdout  # nothing left over from -q
    verbose = runner.invoke(app, ["-v", "analyze", str(tmp_path / "none.onnx")])
    assert verbose.exit_code == 2 and "Traceback" in verbose.stderr


def test_plan_out_equal_to_output_is_named_as_such(tmp_path):
    """`--plan-out out.onnx -o out.onnx` said "out.onnx: is also the input", and --force
    would have written the plan over the pruned model."""
    path = tmp_path / "m.onnx"
    onnx.save(_small_row_chain(5), path)
    out = str(tmp_path / "out.onnx")
    for extra in ([], ["--force"]):
        r = runner.invoke(app, ["prune", str(path), "-o", out, "--plan-out", out, *extra])
        assert r.exit_code == 2 and "--plan-out and -o name the same file" in r.stderr, r.stderr


def test_verify_models_with_other_inputs_says_they_cannot_be_compared(tmp_path):
    """yolox_s (input `images`) against mobilenet_v2 said "outputs differ from the reference
    (rtol ...); the model has input(s) the reference lacks: images on 2 random input
    sample(s)": nothing had been run or compared."""
    a = tmp_path / "a.onnx"
    onnx.save(_small_row_chain(6), a)
    other = _small_row_chain(6)
    other.graph.input[0].name = "images"
    other.graph.node[0].input[0] = "images"
    b = tmp_path / "b.onnx"
    onnx.save(other, b)
    r = runner.invoke(app, ["verify", str(a), str(b)])
    assert r.exit_code == 1
    assert "cannot compare the models: the model has input(s) the reference lacks: images" in (
        r.stderr
    )
    assert "outputs differ" not in r.stderr and "sample" not in r.stderr


def test_tolerances_must_be_finite(tmp_path):
    """`verify --atol inf` passed any two models (a check that cannot fail); `--rtol nan`
    failed identical ones, and `prune --rtol nan` failed every verification, exit 1."""
    a = tmp_path / "a.onnx"
    onnx.save(_small_row_chain(7), a)
    b = tmp_path / "b.onnx"
    onnx.save(_small_row_chain(8), b)
    for option, value in [("--atol", "inf"), ("--rtol", "inf"), ("--rtol", "nan")]:
        r = runner.invoke(app, ["verify", str(a), str(b), option, value])
        assert r.exit_code == 2 and "must be finite" in r.stderr, (option, value, r.output)
    r = runner.invoke(app, ["prune", str(a), "--rtol", "nan", "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "must be finite" in r.stderr, r.output


def test_external_data_gets_the_usual_file_mode(tmp_path):
    """`prune` of a model with external data wrote `<out>.onnx.data` as 0600 (onnx's own
    mode) beside a 0644 `.onnx`: another user or a container could read the graph only."""
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    rng = np.random.default_rng(9)
    ws = [rng.normal(size=(64, 64, 1, 1)).astype(np.float32) for _ in range(3)]
    onnx.save(_conv_chain(*ws), src, save_as_external_data=True, location="m.data")
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["prune", str(src), "-q", "-r", "0.5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = tmp_path / "o.onnx.data"
    assert data.exists()
    assert (data.stat().st_mode & 0o777) == (out.stat().st_mode & 0o777)


def test_export_builder_returning_no_module_reads_well(tmp_path, monkeypatch):
    """A builder returning 5 said "returned a int, not a torch.nn.Module"."""
    (tmp_path / "mybuild.py").write_text("def bad():\n    return 5\n")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", "mybuild:bad", "-s", "1,3,8,8", "-o", "x.onnx"])
    assert r.exit_code == 2, r.output
    assert "returned int (5), not a torch.nn.Module; make it return the model" in r.stderr


def test_run_time_passes_lists_each_pass_once(tmp_path):
    """`run --time-passes` printed the table (pass, modified, seconds) and then every pass
    again as 'pass: modified/unchanged'."""
    path = tmp_path / "m.onnx"
    onnx.save(_small_row_chain(10), path)
    out = str(tmp_path / "o.onnx")
    timed = runner.invoke(app, ["run", str(path), "-p", "cleanup", "-o", out, "--time-passes"])
    assert timed.exit_code == 0, timed.output
    assert "cleanup: " not in timed.stdout and "total" in timed.stdout
    plain = runner.invoke(app, ["run", str(path), "-p", "cleanup", "-o", out])
    assert plain.exit_code == 0 and "cleanup: " in plain.stdout


def test_verify_inputs_of_the_wrong_shape_are_named(tmp_path):
    """An .npz of 1x8x4x4 arrays for a 1x8x8x8 input ended in onnxruntime's native message
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions ...")."""
    path = tmp_path / "m.onnx"
    onnx.save(_small_row_chain(11), path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((1, 8, 4, 4), np.float32))
    r = runner.invoke(app, ["verify", str(path), str(path), "--inputs", str(bad)])
    assert r.exit_code == 2
    assert "array 'x' is 1x8x4x4, the model input takes 1x8x8x8" in r.stderr, r.stderr
    assert "ONNXRuntimeError" not in r.stderr
