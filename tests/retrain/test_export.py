"""``export_onnx`` / ``plan_from_zeros`` / ``load_builder``: a pruned torch model to sparse and
compact ONNX that onnxruntime runs with torch's outputs, the plan in the metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from drpopt.errors import BadInputError, CheckFailedError
from drpopt.ir.analysis import analyze
from drpopt.ir.counting import _is_param
from drpopt.passes.plan import Plan, keep_masks
from drpopt.retrain import Pruner
from drpopt.retrain.export import export_onnx, load_builder, plan_from_zeros
from drpopt.retrain.pruner import MASK_SUFFIX

SHAPE = (2, 3, 16, 16)


class SmallNet(nn.Module):
    """Stem, a residual add, a concat of two branches, BN everywhere, a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.res = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_res = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 3, padding=1)
        self.bn_cat = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn_down = nn.BatchNorm2d(24)
        self.fc1 = nn.Linear(24, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn_res(self.res(x)))
        x = torch.relu(self.bn_cat(torch.cat([self.left(x), self.right(x)], dim=1)))
        x = torch.relu(self.bn_down(self.down(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(torch.relu(self.fc1(x)))


def example(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def pruned_net(steps: int = 2) -> tuple[SmallNet, Pruner]:
    """SmallNet pruned one-shot to 0.5 (first layer included) and trained ``steps`` SGD steps."""
    torch.manual_seed(0)
    model = SmallNet()
    x = example()
    pruner = Pruner(model, x, final_rate=0.5, keep_first=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = torch.randint(0, 10, (SHAPE[0],), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        pruner.update()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    return model, pruner


def run_ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x.numpy()})[0]


def torch_eval(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The model's eval-mode output (its mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).numpy()
    finally:
        model.train(was_training)


def assert_close(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-4) -> None:
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-6 + rtol * np.abs(ref).max()


def param_count_after(sparse: onnx.ModelProto, plan: Plan) -> int:
    """The parameters the compact model must have: every parameter of the sparse model with
    the plan's pruned channels cut from each of its axes."""
    analysis = analyze(sparse)
    masks = keep_masks(plan.resolve(analysis))
    total = 0
    for value in analysis.graph.values.values():
        if not _is_param(value):
            continue
        kept = 1
        for axis, dim in enumerate(value.const.shape):
            mask = masks.get((value.name, axis))
            kept *= int(mask.sum()) if mask is not None else dim
        total += kept
    return total


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The pruned net (masks still attached), its pruner, and its sparse and compact exports."""
    root = tmp_path_factory.mktemp("export")
    model, pruner = pruned_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = {
        form: export_onnx(model, example(), root / f"{form}.onnx", compact=form == "compact")
        for form in ("sparse", "compact")
    }
    return model, pruner, before, results


def test_the_pruner_prunes_the_residual_concat_and_head_groups(exported):
    _, pruner, _, _ = exported
    keys = {g.key for g in pruner.plan.groups}
    assert "res.weight[0]@0" in keys or "stem.weight[0]@0" in keys  # the residual group
    assert any(k.startswith(("left.", "right.")) for k in keys)  # the concat group
    assert all(len(g.keep) == g.size // 2 for g in pruner.plan.groups)


@pytest.mark.parametrize("form", ["sparse", "compact"])
def test_exports_pass_the_checker_and_compute_what_torch_computes(exported, form):
    model, _, _, results = exported
    result = results[form]
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert result.form == form and result.plan_source == "drpopt masks"
    assert "eval mode" in result.trace_path
    assert result.max_rel_error <= 1e-4
    for seed in (0, 7):  # the example input and another one
        x = example(seed)
        assert_close(run_ort(result.path, x), torch_eval(model, x))


def test_sparse_keeps_shapes_and_parameter_names(exported):
    model, _, _, results = exported
    proto = onnx.load(str(results["sparse"].path))
    state = model.state_dict()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name in ("stem.weight", "res.weight", "left.weight", "right.bias", "fc1.weight"):
        np.testing.assert_array_equal(inits[name], state[name].numpy())
    assert not any(name.endswith(MASK_SUFFIX) or name == "drpopt_state" for name in inits)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert results["sparse"].params == results["sparse"].dense_params


def test_compact_has_the_parameters_the_plan_says(exported):
    _, pruner, _, results = exported
    sparse = onnx.load(str(results["sparse"].path))
    compact = results["compact"]
    assert compact.params == param_count_after(sparse, pruner.plan)
    assert compact.params < compact.dense_params == results["sparse"].params
    assert compact.macs < compact.dense_macs
    proto = onnx.load(str(compact.path))
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert weights["left.weight"][0] + weights["right.weight"][0] == 8  # concat halved
    assert weights["fc1.weight"][1] == weights["down.weight"][0] == 12


@pytest.mark.parametrize("form", ["sparse", "compact"])
def test_metadata_holds_the_plan(exported, form):
    _, pruner, _, results = exported
    meta = {p.key: p.value for p in onnx.load(str(results[form].path)).metadata_props}
    plan = Plan.from_dict(json.loads(meta["drpopt.plan"]))
    assert [(g.key, g.size, g.keep) for g in plan.groups] == [
        (g.key, g.size, g.keep) for g in pruner.plan.groups
    ]
    assert plan.groups == results[form].plan.groups
    sparsity = json.loads(meta["drpopt.sparsity"])
    assert sparsity and all(0.0 <= s <= 1.0 for s in sparsity.values())


def test_the_callers_model_is_left_alone(exported):
    model, pruner, before, _ = exported
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert any(k.endswith(MASK_SUFFIX) for k in after)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert model.training
    assert pruner.masked_parameters  # still attached: hooks and buffers in place


def test_plan_from_zeros_of_a_finalized_model_is_the_pruners_plan():
    model, pruner = pruned_net(steps=1)
    expected = pruner.plan
    finalized = pruner.finalize()
    assert finalized is model and not any(k.endswith(MASK_SUFFIX) for k in model.state_dict())
    plan = plan_from_zeros(finalized, example())
    assert [(g.key, g.size, g.keep, g.producers) for g in plan.groups] == [
        (g.key, g.size, g.keep, g.producers) for g in expected.groups
    ]
    assert plan.rate == pytest.approx(plan.pruned_channels / plan.settings["eligible_channels"])


def test_plan_from_zeros_of_a_dense_model_is_empty():
    torch.manual_seed(0)
    assert plan_from_zeros(SmallNet(), example()).groups == []


def test_an_all_zero_group_keeps_one_channel():
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():
        model.fc1.weight.zero_()
    (group,) = plan_from_zeros(model, example()).groups
    assert group.key == "fc1.weight[0]@0" and group.keep == [0]


def torch_pruned_net(bn_too: bool = True) -> SmallNet:
    """SmallNet pruned with ``torch.nn.utils.prune``: half the rows of ``down`` (and of its
    BN's scale and shift when ``bn_too``) and of ``fc1`` (with its bias); no drpopt masks."""
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():
        model.bn_down.bias.uniform_(0.5, 1.0)  # a live shift: the channel would carry it
    model.eval()
    for conv, bn in ((model.down, model.bn_down), (model.fc1, None)):
        torch_prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
        rows = conv.weight_mask.flatten(1).any(dim=1).float()
        if bn is not None and bn_too:
            torch_prune.custom_from_mask(bn, "weight", rows)
            torch_prune.custom_from_mask(bn, "bias", rows)
        if conv.bias is not None:
            torch_prune.custom_from_mask(conv, "bias", rows)
    return model


@pytest.mark.parametrize("form", ["sparse", "compact"])
def test_a_torch_nn_utils_prune_model_exports(tmp_path, form):
    model = torch_pruned_net()
    result = export_onnx(model, example(), tmp_path / "m.onnx", compact=form == "compact")
    assert result.plan_source == "torch.nn.utils.prune masks"
    assert {(g.key, len(g.keep)) for g in result.plan.groups} == {
        ("down.weight[0]@0", 12),
        ("fc1.weight[0]@0", 16),
    }
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    x = example(3)
    assert_close(run_ort(result.path, x), torch_eval(model, x))
    if form == "compact":
        assert result.params < result.dense_params
    assert hasattr(model.down, "weight_orig")  # the caller's reparametrisation is kept
    assert plan_from_zeros(model, example()).groups == result.plan.groups


def test_zero_rows_with_a_live_bn_shift_fail_compact_but_export_sparse(tmp_path):
    model = torch_pruned_net(bn_too=False)
    with pytest.raises(CheckFailedError, match=r"differs from torch.*bn_down\.bias"):
        export_onnx(model, example(), tmp_path / "c.onnx", compact=True)
    assert not (tmp_path / "c.onnx").exists()
    result = export_onnx(model, example(), tmp_path / "s.onnx")
    assert result.path.is_file() and result.plan.pruned_channels == 12 + 16


def test_an_unpruned_model_exports_with_an_empty_plan(tmp_path):
    torch.manual_seed(0)
    result = export_onnx(SmallNet(), example(), tmp_path / "m.onnx", compact=True)
    assert result.plan.groups == [] and result.plan_source == "zero weights"
    assert result.params == result.dense_params


def test_a_missing_output_directory_is_bad_input(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(BadInputError, match="does not exist"):
        export_onnx(SmallNet(), example(), tmp_path / "no" / "m.onnx")


# ---- load_builder ------------------------------------------------------------------------
def test_load_builder_from_a_module_and_a_file(tmp_path):
    from drpopt.zoo.torch_models import digits_cnn

    assert load_builder("drpopt.zoo.torch_models:digits_cnn") is digits_cnn
    (tmp_path / "helper_mod.py").write_text("WIDTH = 5\n")
    (tmp_path / "models.py").write_text(
        "import torch\nfrom helper_mod import WIDTH\n\n"
        "def build(width=WIDTH):\n    return torch.nn.Linear(3, width)\n"
    )
    build = load_builder(f"{tmp_path / 'models.py'}:build")
    assert build().out_features == 5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "MODULE:FUNCTION"),
        ("drpopt_no_such_module:f", "cannot import module"),
        ("missing/file.py:build", "no such file"),
        ("drpopt.zoo.torch_models:no_such_fn", "has no 'no_such_fn'"),
        ("drpopt.zoo.torch_models:TORCH_MODELS", "not a function"),
        ("{bad}:build", "raised ZeroDivisionError"),
    ],
)
def test_load_builder_errors_name_the_fix(tmp_path, spec, message):
    bad = tmp_path / "bad.py"
    bad.write_text("1 / 0\n")
    with pytest.raises(BadInputError, match=message):
        load_builder(spec.replace("{bad}", str(bad)))
