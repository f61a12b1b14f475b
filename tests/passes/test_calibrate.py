"""Calibration data: .npz and image folders streamed in batches, preprocessing as stated,
activations fetched through onnxruntime one batch at a time."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from drpopt.errors import BadInputError
from drpopt.passes import PassManager, parse_pipeline
from drpopt.passes.activations import ChannelMoments, fetching, run_batches, session
from drpopt.passes.calibrate import CalibrationData, InputSpec, Preprocess
from drpopt.passes.inputs import write_png
from drpopt.zoo.builder import OnnxBuilder

SPEC = [InputSpec("x", ("N", 3, 8, 8))]


def small_model(batch: int | str = "N") -> onnx.ModelProto:
    b = OnnxBuilder(seed=1)
    x = b.input("x", [batch, 3, 8, 8])
    h = b.relu(b.conv(x, 6, name="c1"))
    h = b.relu(b.conv(h, 5, name="c2"))
    b.output(b.conv(h, 4, name="c3"))
    return b.build()


def test_npz_streams_in_batches_and_splits(tmp_path):
    data = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data)
    calib = CalibrationData(tmp_path / "c.npz", batch_size=4)
    batches = [b["x"] for b in calib.batches(SPEC)]
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), data)
    fit, held = calib.split(0.2)
    assert len(fit) == 8 and held is not None and len(held) == 2
    np.testing.assert_array_equal(next(held.batches(SPEC))["x"], data[8:])
    assert CalibrationData(tmp_path / "c.npz", limit=3).num_batches == 1


def test_single_array_feeds_a_single_input_of_any_name():
    data = np.ones((2, 3, 8, 8), np.float32)
    out = next(CalibrationData({"images": data}).batches(SPEC))
    assert set(out) == {"x"} and out["x"].shape == (2, 3, 8, 8)


def test_missing_inputs_and_files_are_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="no such calibration data"):
        CalibrationData(tmp_path / "nope.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        CalibrationData(tmp_path / "empty")
    calib = CalibrationData({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))})
    with pytest.raises(BadInputError, match="no array for model input 'x'"):
        next(calib.batches(SPEC))
    with pytest.raises(BadInputError, match="different sample counts"):
        CalibrationData({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})


def test_image_folder_preprocessing_as_stated(tmp_path, monkeypatch):
    # PNG and .npy are read without Pillow (the README's image examples run without it)
    monkeypatch.setitem(sys.modules, "PIL", None)
    for i, color in enumerate([(10, 20, 30), (200, 100, 50)]):
        write_png(tmp_path / f"{i}.png", np.broadcast_to(np.uint8(color), (7, 9, 3)))
    np.save(tmp_path / "2.npy", np.full((5, 5, 3), 255, np.uint8))
    pre = Preprocess(
        size=(4, 6), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), order="bgr", layout="nhwc"
    )
    calib = CalibrationData(tmp_path, batch_size=8, preprocess=pre)
    (batch,) = list(calib.batches([InputSpec("img", (1, 4, 6, 3))]))
    x = batch["img"]
    assert x.shape == (3, 4, 6, 3) and x.dtype == np.float32
    want0 = (np.array([30, 20, 10]) / 255.0 - pre.mean) / np.array(pre.std)
    np.testing.assert_allclose(x[0, 2, 3], want0, rtol=1e-5)
    np.testing.assert_allclose(x[2, 0, 0], (1.0 - np.array(pre.mean)) / pre.std, rtol=1e-5)
    # nchw takes the model's own size when none is given; a grey input gets grey images
    (grey,) = list(CalibrationData(tmp_path).batches([InputSpec("g", (1, 1, 3, 3))]))
    assert grey["g"].shape == (3, 1, 3, 3)
    with pytest.raises(BadInputError, match="one input"):
        next(CalibrationData(tmp_path).batches([SPEC[0], InputSpec("y", (1, 3, 8, 8))]))


def test_fetching_keeps_what_the_outputs_need_and_computes_the_same():
    model = small_model()
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    full = fetching(model, ["c1", "c2", "c3"])
    early = fetching(model, ["c1"])
    assert len(early.graph.node) < len(full.graph.node)
    ref = session(full).run(["c1"], {"x": x})[0]
    np.testing.assert_array_equal(session(early).run(["c1"], {"x": x})[0], ref)


def test_moments_accumulate_over_batches_and_static_batches_run_in_chunks():
    x = np.random.default_rng(1).standard_normal((7, 3, 8, 8)).astype(np.float32)
    for model in (small_model(), small_model(batch=1)):  # a fixed batch of 1: chunks
        mom = ChannelMoments(1)
        for (outs,) in run_batches([model], [["c2"]], CalibrationData({"x": x}, batch_size=3)):
            mom.add(outs["c2"])
        whole = session(fetching(small_model(), ["c2"])).run(["c2"], {"x": x})[0]
        np.testing.assert_allclose(mom.mean_abs, np.abs(whole).mean(axis=(0, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose(mom.mean, whole.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_calibrate_pass_attaches_data_with_a_holdout(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((10, 3, 8, 8), np.float32))
    result = PassManager(parse_pipeline(f"calibrate:data={tmp_path / 'c.npz'}:holdout=0.3"))(
        small_model()
    )
    assert len(result.context.calibration) == 7
    assert len(result.context.calibration_holdout) == 3
    assert not result.modified
    with pytest.raises(BadInputError, match="data=PATH"):
        parse_pipeline("calibrate")


def test_fetch_chunks_bound_the_bytes_of_one_batch():
    from drpopt.passes.activations import fetch_chunks
    from drpopt.passes.manager import load_graph

    graph = load_graph(small_model())
    names = ["c1", "c2", "c3"]  # 6, 5, 4 channels of 8x8 floats per sample
    assert fetch_chunks(graph, names, 2, budget=10**9) == [names]
    budget = 2 * 4 * 64 * 9  # batch 2: c1 alone (6 channels), then c2 + c3 (5 + 4)
    assert fetch_chunks(graph, names, 2, budget=budget) == [["c1"], ["c2", "c3"]]
