"""CLI conventions, one set of figures and one analysis (issue 9, items 4-6): --version,
-h, -q/-v and --json on every command, README-like metavars, options without effect
refused, export finding modules in the current directory, prune analysing once with a
progress bar on stderr, and the same figures in analyze, prune, check and report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import onnx
import pytest
from dynmodels import dynamic_cnn
from typer.testing import CliRunner

from drpopt.cli.main import app
from drpopt.zoo import build

runner = CliRunner()
COMMANDS = ["analyze", "prune", "run", "verify", "passes", "targets", "check", "report",
            "export", "demo"]  # fmt: skip
ONNX_COMMANDS = ["analyze", "prune", "run", "verify", "check", "report"]
WRITERS = ["prune", "run", "report", "export", "demo"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "model.onnx"
    onnx.save(build("resnet18"), str(path))
    return path


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("drpopt ")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_h_q_v_json_and_readable_metavars(command):
    result = runner.invoke(app, [command, "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    for flag in ("-q", "--quiet", "-v", "--verbose", "--json"):
        assert flag in text, f"{command}: no {flag}"
    assert not re.search(r"<[a-z]", text), f"{command}: typer type metavars in help"
    assert "{" not in text.split("\n", 3)[1]
    if command in ONNX_COMMANDS:
        assert "--input-shape" in text
    if command in WRITERS:
        assert "-o" in text and "--output" in text


def test_prune_help_states_the_default_rate():
    text = runner.invoke(app, ["prune", "-h"], env={"COLUMNS": "200"}).stdout
    assert "RATE" in text and "generic 0.5, drpai 0.7" in text and "MODEL" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "M", "--compact", "--sparse", "-o", "O"], "exclude each other"),
        (["prune", "M", "--plan", "P", "--rate", "0.5", "-o", "O"], "no effect with --plan"),
        (["prune", "M", "--exclude", "no_such_layer*", "-o", "O"], "matches no layer"),
        (["run", "M", "-p", "score,mask"], "without -o"),
        (["run", "M", "-p", "cleanup", "--inputs", "P", "-o", "O"], "add verify"),
        (["demo", "--save", "O"], "give --model"),
        (["verify", "M", "M", "--mean", "0.5"], "give --inputs"),
        (["verify", "M", "M", "--inputs", "P", "--seed", "3"], "drop them with --inputs"),
        (["report", "M"], "give -o"),
        (["report", "M", "--inputs", "P", "-o", "O"], "give --compare"),
        (["analyze", "M", "--input-shape", "1,3,0,8"], "positive integers"),
        (["analyze", "M", "--input-shape", "z:1,3,8,8"], "no input named 'z'"),
    ],
)
def test_options_without_effect_are_errors(model, tmp_path, args, message):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    npz = tmp_path / "in.npz"
    import numpy as np

    np.savez(npz, input=np.zeros((1, 3, 64, 64), np.float32))
    subst = {"M": str(model), "O": str(tmp_path / "o.onnx"), "P": str(npz)}
    if "--plan" in args:
        subst["P"] = str(plan)
    argv = [subst.get(a, a) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (argv, result.output)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_targets_purpose_is_not_cut_at_a_colon():
    result = runner.invoke(app, ["targets", "--json"])
    data = {p["name"]: p for p in json.loads(result.stdout)}
    assert data["nm-2-4"]["description"].startswith("2:4")
    table = runner.invoke(app, ["targets"], env={"COLUMNS": "250"}).stdout
    assert "2:4 sparsity along" in table


def test_export_finds_modules_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "mymodels_issue9.py").write_text(
        "import torch\n\n\ndef build_model():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["export", "mymodels_issue9:build_model", "-s", "1,3,16,16", "-o", "e.onnx"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.onnx").is_file()


def test_prune_analyses_once(model, tmp_path, monkeypatch):
    from drpopt.ir import analysis

    calls = []
    real = analysis._analyze

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "_analyze", counting)
    for extra in (["--compact"], ["--target", "drpai"]):
        calls.clear()
        result = runner.invoke(app, ["prune", str(model), *extra, "-o", str(tmp_path / "o.onnx")])
        assert result.exit_code == 0, result.output
        assert len(calls) == 1, f"{extra}: analysed {len(calls)} times"


def _prune_subprocess(model, out, *extra):
    env = dict(os.environ, DRPOPT_PROGRESS_DELAY="0", FORCE_COLOR="1", TTY_INTERACTIVE="1")
    return subprocess.run(
        [sys.executable, "-m", "drpopt", "prune", str(model), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_progress_on_stderr_with_stdout_piped_and_silent_under_q(model, tmp_path):
    done = _prune_subprocess(model, tmp_path / "a.onnx")
    assert done.returncode == 0, done.stderr
    assert "━" in done.stderr and "/" in done.stderr  # the bar: a step name, n/total
    assert "wrote" in done.stdout
    quiet = _prune_subprocess(model, tmp_path / "b.onnx", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_one_set_of_figures(model, tmp_path):
    """analyze, prune, check and report agree on the same file; eligible channels are the
    plan's groups; the drpai summary states its single-weight pattern and total sparsity."""
    out, plan = tmp_path / "s.onnx", tmp_path / "plan.json"
    a = json.loads(runner.invoke(app, ["analyze", str(model), "--json"]).stdout)
    p = runner.invoke(
        app,
        ["prune", str(model), "--target", "drpai", "-o", str(out), "--plan-out", str(plan),
         "--json"],
    )  # fmt: skip
    assert p.exit_code == 0, p.output
    s = json.loads(p.stdout)
    assert s["before"]["params"] == a["totals"]["params"]
    assert s["before"]["macs"] == a["totals"]["macs"]
    r = json.loads(runner.invoke(app, ["report", str(out), "--json"]).stdout)["figures"]
    c = json.loads(runner.invoke(app, ["check", str(out), "--json"]).stdout)["figures"]
    for key in ("params", "nonzero_params", "macs", "macs_nonzero"):
        assert s["after"][key] == r[key] == c[key], key
    assert s["after"]["macs_nonzero"] < s["after"]["macs"]  # zeros skipped, stated apart
    groups = json.loads(plan.read_text())["groups"]
    assert s["eligible_channels"] == sum(g["size"] for g in groups)
    assert s["pruned_channels"] == sum(g["size"] - len(g["keep"]) for g in groups)
    zero = 1 - s["after"]["nonzero_params"] / s["after"]["params"]
    assert "50% of single weights" in s["pattern"]
    assert f"total weight sparsity {100 * zero:.1f}%" in s["pattern"]
    text = runner.invoke(app, ["prune", str(model), "--target", "drpai", "-o", str(out),
                               "--force"], env={"COLUMNS": "200"}).stdout  # fmt: skip
    assert "50% of single weights" in text and "total weight sparsity" in text
    assert "computed for input shapes input: 1x3x64x64" in text


def test_figures_say_the_shapes(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_cnn(), str(path))
    plain = runner.invoke(app, ["analyze", str(path)])
    assert plain.exit_code == 0
    assert "--input-shape x:1,3,H,W" in plain.stderr and "count as 1" in plain.stderr
    fixed = runner.invoke(app, ["analyze", str(path), "--input-shape", "x:1,3,32,32", "--json"])
    data = json.loads(fixed.stdout)
    assert data["model"]["input_shapes"] == {"x": [1, 3, 32, 32]}
    assert fixed.stderr == ""
    pruned = runner.invoke(
        app,
        ["prune", str(path), "--input-shape", "1,3,32,32", "-o", str(tmp_path / "p.onnx"),
         "--json"],
    )  # fmt: skip
    assert pruned.exit_code == 0, pruned.output
    s = json.loads(pruned.stdout)
    assert s["input_shapes"] == {"x": [1, 3, 32, 32]}
    assert "x: 1x3x32x32" in s["verify"]["inputs"]
    unfixed = runner.invoke(app, ["prune", str(path), "-o", str(tmp_path / "q.onnx")])
    assert unfixed.exit_code == 2 and "--input-shape x:1,3,H,W" in unfixed.stderr


def _narrow_model() -> onnx.ModelProto:
    """Three 3x3 convs of 4 channels: every group narrower than drpai's 8-channel alignment."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, cin in enumerate((3, 4, 4, 4)):
        w = rng.normal(size=(4, cin, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "narrow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("narrow", [False, True], ids=["meets", "falls-short"])
def test_prune_says_when_its_sparse_result_falls_short_of_the_target(model, tmp_path, narrow):
    """`prune --target drpai` and `check --target drpai` agree on the written model: prune
    warns (exit 0, the model is written) exactly when check will exit 1, with check's line
    and why; its JSON carries the same verdict."""
    src = model
    if narrow:
        src = tmp_path / "narrow.onnx"
        onnx.save(_narrow_model(), str(src))
    out = tmp_path / "s.onnx"
    p = runner.invoke(app, ["prune", str(src), "--target", "drpai", "-o", str(out)])
    assert p.exit_code == 0, p.output
    c = runner.invoke(app, ["check", str(out), "--target", "drpai"])
    assert c.exit_code == (1 if narrow else 0), c.output
    assert ("does not meet target 'drpai'" in p.stderr) is narrow
    if narrow:
        assert "`drpopt check --target drpai` exits 1" in p.stderr
        assert "pruned 0 of 2 eligible groups" in p.stderr  # (the last one is the output)
    j = runner.invoke(app, ["prune", str(src), "--target", "drpai", "-o", str(out), "--force",
                            "--json"])  # fmt: skip
    assert json.loads(j.stdout)["target_check"]["ok"] is (not narrow)


def test_check_refuses_the_compact_result_of_a_compact_target(model, tmp_path):
    """`cpu` exports compact models: `check --target cpu` on what `prune --target cpu` wrote
    has no zeros to measure (it said "0.0% ... does not meet", exit 1, on a right result):
    bad input, one line naming the sparse form; the sparse form is measured as usual, and
    --min-sparsity still measures the compact model as asked."""
    compact, sparse = tmp_path / "c.onnx", tmp_path / "s.onnx"
    p = runner.invoke(app, ["prune", str(model), "--target", "cpu", "-o", str(compact)])
    assert p.exit_code == 0, p.output
    c = runner.invoke(app, ["check", str(compact), "--target", "cpu"])
    assert c.exit_code == 2, c.output
    assert "is a compact model" in c.stderr and "--sparse" in c.stderr
    assert len(c.stderr.strip().splitlines()) == 1 and "Traceback" not in c.output
    forced = runner.invoke(app, ["check", str(compact), "--target", "cpu", "--min-sparsity", "0"])
    assert forced.exit_code == 0, forced.output
    p = runner.invoke(app, ["prune", str(model), "--target", "cpu", "--sparse", "-o", str(sparse)])
    assert p.exit_code == 0, p.output
    s = runner.invoke(app, ["check", str(sparse), "--target", "cpu"])
    assert s.exit_code == 0, s.output
    # a dense model carries no plan: it is measured, and falls short
    d = runner.invoke(app, ["check", str(model), "--target", "cpu"])
    assert d.exit_code == 1, d.output
