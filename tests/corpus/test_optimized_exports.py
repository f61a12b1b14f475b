"""Corpus models after onnxscript's optimizer, the pass many deployment pipelines run
before handing a model on (constant folding, shape arithmetic folded into constant
Reshape targets, ``Flatten``/``ReduceMean`` rewritten, unused nodes removed).

Per model: the analysis names every lock, sparse and compact outputs agree at rate 0.5
with the plan's counts, and the dead-channel check holds. Marked ``corpus`` (CI runs it);
skipped without the corpus folder or without onnxscript (not a drpopt dependency).
"""

from __future__ import annotations

import functools

import onnx
import pytest
from corpus_checks import CONFIGS, TOLERANCE, compact_counts, compare_outputs, prune
from deadchannels import assert_groups_complete, random_feeds, run_model

from drpopt import analyze
from drpopt.zoo.corpus import corpus_dir, load_corpus_model

pytestmark = pytest.mark.corpus

# a detector, a depthwise CNN, a concat-chain CNN, a transformer (swin_t takes the
# optimizer itself about 40 s here; vit_b_16 stands for the transformers)
MODELS = ["yolox_s", "mobilenet_v2", "densenet121", "vit_b_16", "shufflenet_v2_x1_0"]


@functools.cache
def optimized(name: str) -> onnx.ModelProto:
    optimizer = pytest.importorskip("onnxscript.optimizer")
    folder = corpus_dir()
    if folder is None or not (folder / f"{name}.onnx").exists():
        pytest.skip(f"no corpus model {name}.onnx")
    return optimizer.optimize(load_corpus_model(folder / f"{name}.onnx"))


@pytest.mark.parametrize("name", MODELS)
def test_optimized_model_prunes_and_compacts(name: str) -> None:
    model = optimized(name)
    a = analyze(model)
    unnamed = [g.id for g in a.locked_groups if not g.reason or not all(x.message for x in g.locks)]
    assert not unnamed, f"{name}: locked groups without a reason: {unnamed}"
    assert a.prunable_groups, name
    pruned = prune(model, CONFIGS["rate0.5"])
    feeds = random_feeds(model)
    err = compare_outputs(run_model(pruned.masked, feeds), run_model(pruned.compact, feeds))
    assert err < TOLERANCE, f"{name}: compact differs from sparse by {err:.3g}"
    params, _ = compact_counts(pruned.compact)
    assert params == pruned.expected_params < pruned.before.params


@pytest.mark.parametrize("name", MODELS)
def test_optimized_model_groups_are_complete(name: str) -> None:
    model = optimized(name)
    assert_groups_complete(analyze(model), model)
