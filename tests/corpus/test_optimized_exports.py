"""Corpus models after the simplifiers deployment pipelines run before handing a model on:
onnxscript's optimizer (constant folding, shape arithmetic folded into constant Reshape
targets, ``Flatten``/``ReduceMean`` rewritten, unused nodes removed), onnxslim and onnxsim
(equal initializers deduplicated, so one constant is read by many unrelated layers;
shapes folded; ops fused).

Per model and tool: the analysis names every lock, sparse and compact outputs agree at
rate 0.5 and with the ``drpai`` target with the plan's counts, and the dead-channel check
holds. Marked ``corpus`` (CI runs it); skipped without the corpus folder or without the
tool (dev dependencies, not drpopt's own).
"""

from __future__ import annotations

import functools

import onnx
import pytest
from deadchannels import assert_groups_complete, random_feeds
from unseen_battery import check_exact

from drpopt import analyze
from drpopt.zoo.corpus import corpus_dir, load_corpus_model

pytestmark = pytest.mark.corpus

# a detector, a depthwise CNN, a concat-chain CNN, a transformer (swin_t takes the
# optimizer itself about 40 s here; vit_b_16 stands for the transformers)
MODELS = ["yolox_s", "mobilenet_v2", "densenet121", "vit_b_16", "shufflenet_v2_x1_0"]


def _onnxscript(model: onnx.ModelProto) -> onnx.ModelProto:
    return pytest.importorskip("onnxscript.optimizer").optimize(model)


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    return pytest.importorskip("onnxslim").slim(model)


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    simplified, ok = pytest.importorskip("onnxsim").simplify(model)
    assert ok, "onnxsim's own check failed"
    return simplified


TOOLS = {"onnxscript": _onnxscript, "onnxslim": _onnxslim, "onnxsim": _onnxsim}


@functools.cache
def optimized(name: str, tool: str) -> onnx.ModelProto:
    folder = corpus_dir()
    if folder is None or not (folder / f"{name}.onnx").exists():
        pytest.skip(f"no corpus model {name}.onnx")
    return TOOLS[tool](load_corpus_model(folder / f"{name}.onnx"))


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("name", MODELS)
def test_optimized_model_prunes_and_compacts(name: str, tool: str) -> None:
    model = optimized(name, tool)
    a = analyze(model)
    unnamed = [g.id for g in a.locked_groups if not g.reason or not all(x.message for x in g.locks)]
    assert not unnamed, f"{name}: locked groups without a reason: {unnamed}"
    assert a.prunable_groups, name
    feeds = random_feeds(model)
    for config in ("rate0.5", "drpai"):
        pruned = check_exact(model, config, feeds)
        assert pruned.expected_params < pruned.before.params, (name, config)


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("name", MODELS)
def test_optimized_model_groups_are_complete(name: str, tool: str) -> None:
    model = optimized(name, tool)
    assert_groups_complete(analyze(model), model)


# detectors, a transformer detector, a BiFPN, a segmenter and an OCR model of the unseen
# battery (tests/corpus/test_unseen_architectures.py), as onnxslim leaves them
UNSEEN = ["yolov8_dynamic", "detr", "efficientdet", "segformer", "crnn_bilstm"]


@pytest.mark.parametrize("name", UNSEEN)
def test_unseen_architectures_after_onnxslim_prune_exactly(name: str) -> None:
    import test_unseen_architectures as unseen

    case = unseen.case(name)
    model = _onnxslim(case.model)
    a = analyze(model)
    assert not [g.id for g in a.locked_groups if not g.reason], name
    for config in ("rate0.5", "rate0.7", "drpai"):
        check_exact(model, config, case.feeds)
    assert_groups_complete(a, model)
