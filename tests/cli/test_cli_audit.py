"""Issue 9 audit, the conventions a new user meets: every option's value has a readable
name and a stated default, every reporting command's --json is JSON alone on stdout, output
folders fail up front in one line, a failure is printed once (stderr, not stdout), demo's
figures are the shared ones, and bench_retrain prints a drop as negative."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import typer.main
from dynmodels import dynamic_cnn
from typer.testing import CliRunner

import drpopt
from drpopt.cli.main import app
from drpopt.zoo import build

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "model.onnx"
    onnx.save(build("se"), str(path))
    return path


def _options():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for p in command.params:
            if p.param_type_name == "option" and not p.is_flag and not p.count:
                yield name, p


def test_every_option_value_has_a_readable_metavar():
    missing = [f"{name} {p.opts[0]}" for name, p in _options() if p.metavar is None]
    assert not missing, f"options without a metavar (help shows a made-up one): {missing}"
    for name, p in _options():
        assert p.metavar == p.metavar.strip() and "<" not in p.metavar, (name, p.metavar)


def test_every_default_is_shown():
    hidden = [
        f"{name} {p.opts[0]}={p.default!r}"
        for name, p in _options()
        if p.default not in (None, [], (), "")
        and not p.show_default
        and "default" not in (p.help or "").lower()
    ]
    assert not hidden, f"defaults not shown in --help: {hidden}"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "M", "-p", "fold-batchnorm,cleanup,verify"],
        ["passes"],
        ["targets"],
        ["report", "M"],
        ["analyze", "M"],
        ["check", "M", "--target", "generic"],
        ["verify", "M", "M"],
        ["demo", "--model", "se"],
        ["prune", "M", "-o", "O"],
    ],
    ids=lambda a: a[0],
)
def test_json_is_json_alone_on_stdout(model, tmp_path, args):
    argv = [{"M": str(model), "O": str(tmp_path / "o.onnx")}.get(a, a) for a in args]
    result = runner.invoke(app, [*argv, "--json"])
    assert result.exit_code in ((0, 1) if args[0] == "check" else (0,)), result.output
    json.loads(result.stdout)  # nothing else on stdout: tables and progress go to stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["run", "M", "-p", "cleanup", "--dump-dir", "/proc/drpopt-x"], "--dump-dir"),
        (["run", "M", "-p", "cleanup", "--dump-dir", "/dev/null"], "--dump-dir"),
        (["demo", "-o", "/proc/drpopt-x"], "-o"),
        (["demo", "-o", "/dev/null"], "-o"),
    ],
)
def test_output_folders_fail_up_front_in_one_line(model, args, option):
    argv = [str(model) if a == "M" else a for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0], lines
    assert result.stdout == ""  # nothing started before the check


def test_a_failure_is_printed_once_on_stderr(model, tmp_path):
    for args in (
        ["prune", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")],
        ["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--compact", "--sparse"],
        ["verify", str(model), str(tmp_path / "missing.onnx")],
        ["analyze", str(tmp_path)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "drpopt", *args], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == "", f"{args}: failure also on stdout: {done.stdout!r}"
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr


def test_demo_reports_the_shared_figures():
    from drpopt.ir.analysis import analyze
    from drpopt.passes.figures import model_figures

    data = json.loads(runner.invoke(app, ["demo", "--model", "se", "--json"]).stdout)
    a = analyze(build("se"))
    assert data["before"] == json.loads(json.dumps(model_figures(a.graph, analysis=a)))
    assert data["params"] == [data["before"]["params"], data["after"]["params"]]
    assert 0 < data["pruned_channels"] < data["eligible_channels"]


def test_bench_retrain_prints_a_drop_as_negative():
    path = Path(drpopt.__file__).parent / "benchmarks" / "bench_retrain.py"
    spec = importlib.util.spec_from_file_location("bench_retrain_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.change_pt(0.9572, 0.9600) == "-0.28"
    assert bench.change_pt(0.9628, 0.9600) == "+0.28"


def test_verify_original_against_pruned_is_drift_with_report_only(model, tmp_path):
    """An original against its pruned model: a mismatch (exit 1) as a check, and with
    --report-only the drift per output (max, mean, max / spread, cosine), exit 0; the
    spread is named for what it is, the reference's range."""
    pruned = tmp_path / "p.onnx"
    assert runner.invoke(app, ["prune", str(model), "-o", str(pruned)]).exit_code == 0
    check = runner.invoke(app, ["verify", str(model), str(pruned)])
    assert check.exit_code == 1 and "outputs differ" in check.stderr
    assert "--report-only reports the drift" in check.stderr  # why exit 1, and what to do
    assert len(check.stderr.strip().splitlines()) == 1
    drift = runner.invoke(
        app, ["verify", str(model), str(pruned), "--report-only"], env={"COLUMNS": "200"}
    )
    assert drift.exit_code == 0, drift.output
    assert "drift" in drift.stdout and "cosine" in drift.stdout and "mean abs" in drift.stdout
    assert "range, max - min" in drift.stdout and "standard deviation" not in drift.stdout
    data = json.loads(runner.invoke(app, ["verify", str(model), str(pruned), "--report-only",
                                          "--json"]).stdout)  # fmt: skip
    assert data["mode"] == "drift"
    (out,) = data["outputs"]
    assert out["max_rel"] == pytest.approx(out["max_abs"] / out["spread"])
    help_text = runner.invoke(app, ["verify", "-h"], env={"COLUMNS": "200"}).stdout
    assert "standard deviation" not in help_text


def test_a_minus_one_dim_model_is_one_line_then_works_with_its_shape(tmp_path):
    """The PP-OCR classifier's input (-1, 3, ?, ?): prune, verify and report --compare
    ended in 'ValueError: negative dimensions are not allowed' (a traceback, exit 1)."""
    path = tmp_path / "cls.onnx"
    onnx.save(dynamic_cnn(dims=(-1, 3, "?", "?"), constants=True), str(path))
    out = str(tmp_path / "o.onnx")
    for args in (["prune", str(path), "-o", out], ["verify", str(path), str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "--input-shape" in errors[0], result.stderr
        fixed = runner.invoke(app, [*args, "--input-shape", "1,3,24,40"])
        assert fixed.exit_code == 0, (args, fixed.output)
    report = ["report", str(path), "--compare", str(path), "--json"]
    data = json.loads(runner.invoke(app, report).stdout)["compare"]  # a report: says why not
    assert data["verify"] is None and "--input-shape" in data["not_compared"]
    data = json.loads(runner.invoke(app, [*report, "--input-shape", "1,3,24,40"]).stdout)
    assert data["compare"]["verify"]["ok"] is True


def test_run_states_the_pattern_it_applied_and_the_figures(model, tmp_path):
    """`run` with a drpai `sparsify` applies the single-weight pattern: its summary says so,
    with the total sparsity, in the figures `check` reads back from the file."""
    out = tmp_path / "s.onnx"
    spec = "score,mask:rate=0.5:target=drpai,apply-masks,sparsify:target=drpai"
    result = runner.invoke(app, ["run", str(model), "-p", spec, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    fig = s["figures"]
    zero = 1 - fig["nonzero_params"] / fig["params"]
    assert "50% of single weights" in s["pattern"]
    assert f"total weight sparsity {100 * zero:.1f}%" in s["pattern"]
    c = json.loads(runner.invoke(app, ["check", str(out), "--json"]).stdout)["figures"]
    assert all(c[k] == fig[k] for k in ("params", "nonzero_params", "macs", "macs_nonzero"))
    text = runner.invoke(
        app, ["run", str(model), "-p", spec, "-o", str(out), "--force"], env={"COLUMNS": "200"}
    ).stdout
    assert s["pattern"] in text and f"(total weight sparsity {100 * zero:.1f}%)" in text
    plain = runner.invoke(app, ["run", str(model), "-p", "cleanup", "--json", "-o", str(out),
                                "--force"])  # fmt: skip
    assert json.loads(plain.stdout)["pattern"] is None


def test_report_of_two_different_plans_is_drift_not_a_failed_check(model, tmp_path):
    """`report small.onnx --compare sparse.onnx` paired two different prunings and judged
    their (expected) difference as a failed check; the same plan stays a check."""
    plan = tmp_path / "plan.json"
    small, sparse, masked = (tmp_path / f"{n}.onnx" for n in ("small", "sparse", "masked"))
    for args in (
        ["prune", str(model), "-r", "0.5", "--compact", "-o", str(small), "--plan-out", str(plan)],
        ["prune", str(model), "-r", "0.25", "--sparse", "-o", str(sparse)],
        ["prune", str(model), "--plan", str(plan), "--sparse", "-o", str(masked)],
    ):
        assert runner.invoke(app, args).exit_code == 0, args
    other = json.loads(runner.invoke(app, ["report", str(small), "--compare", str(sparse),
                                           "--json"]).stdout)["compare"]  # fmt: skip
    assert other["mode"] == "drift" and "different plans" in other["drift_reason"]
    same = json.loads(runner.invoke(app, ["report", str(small), "--compare", str(masked),
                                          "--json"]).stdout)["compare"]  # fmt: skip
    assert same["mode"] == "check" and same["verify"]["ok"] is True
    page = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(small), "--compare", str(sparse), "-o",
                               str(page)]).exit_code == 0  # fmt: skip
    assert 'id="verdict" class="note">drift (not a check): the models carry different plans' in (
        page.read_text()
    )


def test_report_same_plan_with_and_without_a_pattern_is_drift(model, tmp_path):
    plan = tmp_path / "plan.json"
    sparse, plain, same = (tmp_path / f"{n}.onnx" for n in ("sparse", "plain", "same"))
    for args in (
        ["prune", str(model), "--target", "drpai", "-o", str(sparse), "--plan-out", str(plan)],
        ["prune", str(model), "--plan", str(plan), "--compact", "-o", str(plain)],
        ["prune", str(model), "--plan", str(plan), "--compact", "--target", "drpai", "-o",
         str(same)],
    ):  # fmt: skip
        assert runner.invoke(app, args).exit_code == 0, args

    def compare(a, b):
        out = runner.invoke(app, ["report", str(a), "--compare", str(b), "--json"]).stdout
        return json.loads(out)["compare"]

    differs = compare(plain, sparse)
    assert differs["mode"] == "drift" and "patterns differ" in differs["drift_reason"]
    checked = compare(same, sparse)
    assert checked["mode"] == "check" and checked["verify"]["ok"] is True
    reverse = compare(model, plain)  # the original first: still an original vs its pruning
    assert reverse["mode"] == "drift" and "unpruned original" in reverse["drift_reason"]


def test_quiet_prints_only_errors_and_json(model):
    assert runner.invoke(app, ["analyze", str(model), "-q"]).stdout == ""
    json.loads(runner.invoke(app, ["analyze", str(model), "-q", "--json"]).stdout)
    bad = runner.invoke(app, ["analyze", str(model) + ".missing", "-q"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error:")


def test_demo_folder_with_model_is_an_error(tmp_path):
    """`demo --model NAME --out DIR` ignored DIR (the folder is the digits flow's)."""
    result = runner.invoke(app, ["demo", "--model", "se", "--out", str(tmp_path / "dd")])
    assert result.exit_code == 2 and "with --model use --save" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dd").exists()


@pytest.mark.parametrize("bad", ["/proc/drpopt-x.out", "/dev/null/x.out", "DIR"])
def test_every_output_option_refuses_special_paths_in_one_line(model, tmp_path, bad, monkeypatch):
    """Each option that writes (not only -o of prune/run/report) fails before any work,
    exit 2, one line, naming the path."""
    (tmp_path / "mymodels_audit.py").write_text(
        "import torch\n\n\ndef build_model():\n    return torch.nn.Conv2d(3, 4, 3)\n"
    )
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path) if bad == "DIR" else bad
    ok = str(tmp_path / "ok.onnx")
    for args in (
        ["prune", str(model), "-o", ok, "--plan-out", out],
        ["report", str(model), "-o", str(tmp_path / "r.html"), "--png", out],
        ["export", "mymodels_audit:build_model", "-s", "1,3,8,8", "-o", out],
        ["export", str(tmp_path / "mymodels_audit.py") + ":build_model", "-s", "1,3,8,8",
         "-o", out],
    ):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        named = (f"error: {out}", f"error: {Path(out).parent}")
        assert len(lines) == 1 and lines[0].startswith(named), (args, lines)
        assert result.stdout == "", args
