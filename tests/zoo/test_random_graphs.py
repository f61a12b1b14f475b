"""The random model generator: valid ONNX that runs in onnxruntime with finite outputs, both
heads and every block kind reachable, deterministic per seed, and ``large_model`` sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from drpopt.zoo.random_graphs import BLOCKS, hypothesis_models, large_model, random_model


def _run(model: onnx.ModelProto, image: int = 16) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, image, image)).astype(np.float32)
    return sess.run(None, {"input": x})


@pytest.mark.parametrize("seed", range(12))
def test_random_model_is_valid_and_runs(seed: int) -> None:
    model = random_model(seed, n_blocks=1 + seed)
    onnx.checker.check_model(model, full_check=True)
    outs = _run(model)
    assert outs and all(np.isfinite(o).all() for o in outs)
    assert outs[-1].shape == (1, 10)


@pytest.mark.parametrize("head", ["gap", "conv"])
def test_heads(head: str) -> None:
    model = random_model(3, n_blocks=6, head=head)
    outs = _run(model)
    if head == "gap":
        assert len(outs) == 1 and outs[0].shape == (1, 10)
    else:
        assert len(outs) == 2 and outs[0].ndim == 4 and outs[1].shape == (1, 10)
        flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
        producer = next(n for n in model.graph.node if flatten.input[0] in n.output)
        assert producer.op_type != "GlobalAveragePool"  # Flatten of a map larger than 1x1


@pytest.mark.parametrize("block", BLOCKS)
def test_each_block_kind(block: str) -> None:
    model = random_model(11, n_blocks=4, width=4, image=8, blocks=[block])
    onnx.checker.check_model(model)
    assert all(np.isfinite(o).all() for o in _run(model, image=8))


def test_block_mix_and_determinism() -> None:
    ops: Counter[str] = Counter()
    for seed in range(20):
        ops.update(n.op_type for n in random_model(seed, 12).graph.node)
    want = {"Conv", "BatchNormalization", "Relu", "Sigmoid", "Mul", "Add", "Concat", "Split"}
    want |= {"GlobalAveragePool", "MaxPool", "Resize", "Slice", "PRelu", "Flatten", "Gemm"}
    assert want <= set(ops)
    assert random_model(5, 8).SerializeToString() == random_model(5, 8).SerializeToString()


def test_hypothesis_strategy() -> None:
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=5, deadline=None, database=None)
    @hypothesis.given(hypothesis_models(max_blocks=4))
    def check(model: onnx.ModelProto) -> None:
        onnx.checker.check_model(model)

    check()


def test_large_model_size() -> None:
    model = large_model(1000)
    assert 900 <= len(model.graph.node) <= 1100
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred)
    assert np.isfinite(_run(model, image=4)[0]).all()
