"""`drpopt export BUILDER --checkpoint ... -o out.onnx` through typer's runner: sparse and
compact exports of a pruned checkpoint, and one-line errors with exit 2 on bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import typer
from typer.testing import CliRunner

from drpopt.cli import export_cmd
from drpopt.retrain import Pruner
from drpopt.retrain.pruner import MASK_SUFFIX

runner = CliRunner()

BUILDER_SOURCE = textwrap.dedent(
    '''
    """A builder file as a user writes one."""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=16, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.fc = nn.Linear(2 * width, classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(x + self.bn2(self.conv2(x)))
            x = torch.relu(self.conv3(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    def build(width=16, classes=10):
        return Net(width, classes)


    NOT_A_FUNCTION = 3
    '''
)

SHAPE = "2,3,16,16"


@pytest.fixture(scope="module")
def app():
    """A fresh app with the export command (a callback keeps it a command group)."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """drpopt (test app)."""

    export_cmd.register(app)
    export_cmd.register(app)  # a second registration is harmless
    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The builder file, and a pruned checkpoint (masks included, wrapped) saved by torch."""
    root = tmp_path_factory.mktemp("export_cli")
    builder = root / "mynet.py"
    builder.write_text(BUILDER_SOURCE)
    namespace: dict = {}
    exec(compile(BUILDER_SOURCE, str(builder), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["build"](width=16)
    x = torch.randn(2, 3, 16, 16)
    pruner = Pruner(model, x, final_rate=0.5, keep_first=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        pruner.update()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    state = model.state_dict()
    assert any(k.endswith(MASK_SUFFIX) for k in state)
    checkpoint = root / "ckpt.pt"
    torch.save({"model": state, "epoch": 3}, checkpoint)
    pruner.finalize()
    return {"root": root, "builder": builder, "checkpoint": checkpoint, "model": model}


def invoke(app, *args: str):
    return runner.invoke(app, ["export", *args], env={"COLUMNS": "200"})


def ort_output(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("form", ["sparse", "compact"])
def test_export_a_pruned_checkpoint(app, files, tmp_path, form):
    out = tmp_path / f"{form}.onnx"
    result = invoke(
        app,
        f"{files['builder']}:build",
        "--checkpoint",
        str(files["checkpoint"]),
        "--input-shape",
        SHAPE,
        "-o",
        str(out),
        f"--{form}",
        "--builder-arg",
        "width=16",
    )
    assert result.exit_code == 0, result.output
    for word in (form, "channels pruned", "zero weights", "parameters", "MACs", "match"):
        assert word in result.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    model = files["model"].eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_output(out, x.numpy())
    assert np.abs(got - ref).max() <= 1e-6 + 1e-4 * np.abs(ref).max()
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert weights["conv1.weight"][0] == (8 if form == "compact" else 16)


def test_json_summary_of_a_module_builder(app, files, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(files["root"]))
    out = tmp_path / "m.onnx"
    result = invoke(
        app,
        "mynet:build",
        "-c",
        str(files["checkpoint"]),
        "-s",
        SHAPE,
        "-o",
        str(out),
        "--compact",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["form"] == "compact" and data["pruned_channels"] > 0
    assert data["params"] < data["params_dense"] and data["macs"] < data["macs_dense"]
    assert data["max_rel_error"] <= 1e-4


def test_no_checkpoint_exports_the_built_model(app, files, tmp_path):
    out = tmp_path / "dense.onnx"
    result = invoke(app, f"{files['builder']}:build", "-s", SHAPE, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "0 channels pruned" in result.stdout and out.is_file()


def test_a_torch_nn_utils_prune_checkpoint(app, files, tmp_path):
    from torch.nn.utils import prune

    namespace: dict = {}
    exec(BUILDER_SOURCE, namespace)
    torch.manual_seed(1)
    model = namespace["build"]()
    prune.ln_structured(model.conv3, "weight", amount=0.5, n=1, dim=0)
    prune.custom_from_mask(model.conv3, "bias", model.conv3.weight_mask[:, 0, 0, 0])
    ckpt = tmp_path / "torch_pruned.pt"
    torch.save(model.state_dict(), ckpt)  # conv3.weight_orig, conv3.weight_mask, ...
    out = tmp_path / "c.onnx"
    result = invoke(
        app, f"{files['builder']}:build", "-c", str(ckpt), "-s", SHAPE, "-o", str(out), "--compact"
    )
    assert result.exit_code == 0, result.output
    weights = {t.name: tuple(t.dims) for t in onnx.load(str(out)).graph.initializer}
    assert weights["conv3.weight"][0] == 16 and weights["fc.weight"][1] == 16


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing checkpoint", "no such checkpoint"),
        ("bad shape", "--input-shape '1,3,x'"),
        ("zero dim", "positive integers"),
        ("missing builder file", "no such file"),
        ("missing function", "has no 'nope'"),
        ("not callable", "not a function"),
        ("no colon", "MODULE:FUNCTION"),
        ("bad builder arg", "--builder-arg 'width'"),
        ("builder raises", "raised TypeError"),
        ("keys mismatch", "missing keys"),
        ("shape mismatch", "size mismatch for conv1.weight (checkpoint 16x3x3x3, model 8x3x3x3)"),
        ("not a checkpoint", "not a checkpoint torch.load can read"),
        ("pickled object", "--trust-checkpoint"),
        ("missing output dir", "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(app, files, tmp_path, case, message):
    builder = f"{files['builder']}:build"
    ckpt = str(files["checkpoint"])
    out = str(tmp_path / "o.onnx")
    args = [builder, "-c", ckpt, "-s", SHAPE, "-o", out]
    if case == "missing checkpoint":
        args[2] = str(tmp_path / "none.pt")
    elif case == "bad shape":
        args[4] = "1,3,x"
    elif case == "zero dim":
        args[4] = "1,0,16,16"
    elif case == "missing builder file":
        args[0] = f"{tmp_path / 'nothere.py'}:build"
    elif case == "missing function":
        args[0] = f"{files['builder']}:nope"
    elif case == "not callable":
        args[0] = f"{files['builder']}:NOT_A_FUNCTION"
    elif case == "no colon":
        args[0] = str(files["builder"])
    elif case == "bad builder arg":
        args += ["--builder-arg", "width"]
    elif case == "builder raises":
        args += ["--builder-arg", "depth=3"]
    elif case == "keys mismatch":
        other = tmp_path / "other.pt"
        torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3)}, other)
        args[2] = str(other)
    elif case == "shape mismatch":
        args += ["--builder-arg", "width=8"]
    elif case == "not a checkpoint":
        bad = tmp_path / "bad.pt"
        bad.write_text("not a checkpoint")
        args[2] = str(bad)
    elif case == "pickled object":
        pickled = tmp_path / "pickled.pt"
        torch.save({"model": files["model"].state_dict(), "cfg": ValueError("x")}, pickled)
        args[2] = str(pickled)
    elif case == "missing output dir":
        args[6] = str(tmp_path / "no" / "o.onnx")
    result = invoke(app, *args)
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert not (tmp_path / "o.onnx").exists()


def test_registered_once(app):
    names = [c.name for c in app.registered_commands]
    assert names.count("export") == 1


@pytest.mark.parametrize(
    ("target", "form", "opset"), [("generic", "compact", 17), ("drpai", "sparse", 17)]
)
def test_target_profile_sets_form_and_opset(app, files, tmp_path, target, form, opset):
    out = tmp_path / f"{target}.onnx"
    result = invoke(
        app,
        f"{files['builder']}:build",
        "-c",
        str(files["checkpoint"]),
        "-s",
        SHAPE,
        "-o",
        str(out),
        "--target",
        target,
        "--json",
        "--builder-arg",
        "width=16",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["form"] == form
    assert onnx.load(str(out)).opset_import[0].version == opset


def test_recipe_names_and_batchnorm_folding_for_the_drpai_target(app, files, tmp_path):
    """As YOLOX's torch2onnx.py exports: input named ``images``; BatchNorm folded."""
    base = [f"{files['builder']}:build", "-c", str(files["checkpoint"]), "-s", SHAPE]
    base += ["-a", "width=16", "--target", "drpai"]
    out = tmp_path / "drpai.onnx"
    result = invoke(app, *base, "-o", str(out), "--input-names", "images")
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    kept = tmp_path / "kept.onnx"
    result = invoke(app, *base, "-o", str(kept), "--keep-batchnorm")
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(kept))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    two = ["--input-names", "images", "--input-names", "x"]
    bad = invoke(app, *base, "-o", str(tmp_path / "no.onnx"), *two)
    assert bad.exit_code == 2 and "names" in bad.output
