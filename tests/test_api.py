"""``drpopt.api``: typed options validated once, and every model kind in, the same kind out,
judged by running the models in onnxruntime."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import onnx_ir
import pytest

from drpopt import api
from drpopt.errors import BadInputError
from drpopt.passes import CleanupPass, FoldBatchNormPass
from drpopt.passes.interop import to_proto
from drpopt.passes.verify import compare_models
from drpopt.zoo import build


@pytest.fixture(scope="module")
def proto():
    return build("resnet18")


def as_kind(kind: str, proto: onnx.ModelProto, tmp_path):
    if kind == "path":
        path = tmp_path / "m.onnx"
        onnx.save(proto, str(path))
        return path
    if kind == "proto":
        return proto
    if kind == "onnx_ir":
        return onnx_ir.serde.deserialize_model(proto)
    return gs.import_onnx(proto)


KINDS = ["path", "proto", "onnx_ir", "graphsurgeon"]
OUT_TYPES = {
    "path": onnx.ModelProto,
    "proto": onnx.ModelProto,
    "onnx_ir": onnx_ir.Model,
    "graphsurgeon": gs.Graph,
}


@pytest.mark.parametrize("kind", KINDS)
def test_run_returns_the_kind_it_was_given_computing_the_same(kind, proto, tmp_path):
    model = as_kind(kind, proto, tmp_path)
    result = api.run(model, [FoldBatchNormPass(), CleanupPass()])
    assert isinstance(result.model, OUT_TYPES[kind]) and result.modified
    report = compare_models(proto, to_proto(result.model))
    assert report.ok, report.summary()


@pytest.mark.parametrize("kind", KINDS)
def test_prune_returns_the_kind_it_was_given(kind, proto, tmp_path):
    model = as_kind(kind, proto, tmp_path)
    result = api.prune(model, api.PruneOptions(rate=0.5, form="compact"))
    assert isinstance(result.model, OUT_TYPES[kind])
    out = to_proto(result.model)
    assert compare_models(result.proto, out).ok  # the returned model is the verified one
    assert not compare_models(proto, out).ok  # and it is pruned: outputs moved
    assert result.plan.pruned_channels > 0


def test_prune_sparse_is_checked_against_its_compact_form(proto):
    result = api.prune(proto, api.PruneOptions(rate=0.5, form="sparse"))
    assert result.options.compact is False
    assert compare_models(result.proto, to_proto(result.model)).ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, "outside [0, 1)"),
        ({"target": "tpu"}, "unknown target 'tpu'"),
        ({"criterion": "l7"}, "is not one of l1, l2"),
        ({"allocation": "greedy"}, "is not one of uniform, global"),
        ({"form": "dense"}, "not compact or sparse"),
        ({"plan": "p.json", "rate": 0.5}, "no effect with --plan"),
        ({"post": "reconstruct"}, "needs calibration data"),
    ],
)
def test_prune_options_are_checked_when_built(kwargs, message):
    with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace(")", r"\)")):
        api.PruneOptions(**kwargs)


def test_options_carry_values_not_text():
    options = api.PruneOptions(rate=0.1 + 0.2, exclude=["a,b", "c:d"], plan=None)
    mask = next(p for p in options.first if p.name == "mask")
    assert mask.rate == 0.1 + 0.2 and mask.exclude == ["a,b", "c:d"]


def test_a_bad_exclude_pattern_fails_naming_it(proto):
    with pytest.raises(Exception, match="matches no layer"):
        api.prune(proto, api.PruneOptions(rate=0.5, exclude=["nope*"]))


def test_check_passes_the_same_model_and_fails_a_changed_one(proto):
    assert api.check(proto, proto).ok
    pruned = api.prune(proto, api.PruneOptions(rate=0.5)).proto
    assert not api.check(proto, pruned).ok
    with pytest.raises(BadInputError, match="drop them with --inputs"):
        api.CheckOptions(inputs=object(), seed=3)


def test_analyze_reads_every_kind(proto, tmp_path):
    counts = {len(api.analyze(as_kind(k, proto, tmp_path)).groups) for k in KINDS}
    assert len(counts) == 1 and counts.pop() > 0


def test_a_foreign_object_is_bad_input():
    with pytest.raises(BadInputError, match="not a model drpopt reads"):
        api.run(object(), "cleanup")


def test_export_follows_the_target(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        net[0].weight[:4] = 0
        net[0].bias[:4] = 0
    options = api.ExportOptions(target="generic")
    assert options.form == "compact" and options.fold_batchnorm is False
    result = api.export(net, torch.randn(1, 3, 16, 16), tmp_path / "o.onnx", options)
    assert result.form == "compact" and result.max_rel_error <= 1e-4
    with pytest.raises(BadInputError, match="must not be negative"):
        api.ExportOptions(rtol=-1)
    with pytest.raises(BadInputError, match="unknown target"):
        api.ExportOptions(target="tpu")
