"""Verification that can fail (issue 9, item 2): errors are scaled by the reference's
spread, cosine similarity is reported, degenerate references (near zero, constant) refuse,
random inputs need real sizes, and real inputs come from an .npz or a folder of images."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from dynmodels import dynamic_cnn

from drpopt.errors import BadInputError
from drpopt.ir.input_shapes import fix_input_shapes
from drpopt.passes.context import context_of
from drpopt.passes.inputs import ImagePreprocess, load_samples, read_png, write_png
from drpopt.passes.manager import PassFailedError, PassManager
from drpopt.passes.verify import VerifyPass, compare_models

SHAPE = {None: (1, 3, 16, 16)}


def fixed(**kw):
    return fix_input_shapes(dynamic_cnn(**kw), SHAPE)


def test_near_zero_reference_refuses_even_against_itself():
    """The issue's detector: outputs ~1e-17 passed 'max abs <= atol'; now they refuse."""
    ref = fixed(sigmoid=True)
    other = fixed(sigmoid=True, seed=1)  # different weights, also ~0 everywhere
    report = compare_models(ref, other)
    assert not report.ok and report.degenerate == ["y"]
    assert "cannot verify" in report.summary() and "near zero" in report.summary()
    assert not compare_models(ref, ref).ok  # identical models prove nothing either
    with pytest.raises(PassFailedError, match="cannot verify") as info:
        PassManager([VerifyPass()])(ref)
    assert info.value.exit_code == 1


def test_constant_reference_refuses():
    model = fixed()
    for node in model.graph.node:  # w2 = 0, b2 = 2.5: y is 2.5 everywhere
        if node.name == "const_w2":
            node.attribute[0].t.float_data[:] = []
            node.attribute[0].t.raw_data = np.zeros((8, 16, 1, 1), np.float32).tobytes()
        if node.name == "const_b2":
            node.attribute[0].t.raw_data = np.full(8, 2.5, np.float32).tobytes()
    report = compare_models(model, model)
    assert not report.ok and "constant" in report.outputs["y"].degenerate


def test_drift_is_measured_in_spread_with_cosine():
    ref, other = fixed(), fixed(seed=3)
    report = compare_models(ref, other)
    out = report.outputs["y"]
    assert not report.ok and not report.degenerate
    assert out.max_rel == pytest.approx(out.max_abs / out.spread)
    assert -1.0 <= out.cosine < 0.99 and out.mean_abs < out.max_abs
    same = compare_models(ref, ref).outputs["y"]
    assert same.cosine == pytest.approx(1.0) and same.max_abs == 0.0
    assert "2 random input sample(s)" in report.inputs and "1x3x16x16" in report.inputs


def test_random_inputs_need_the_spatial_dims():
    with pytest.raises(BadInputError, match=r"--input-shape x:1,3,H,W"):
        compare_models(dynamic_cnn(), dynamic_cnn())
    # a symbolic batch alone is fine (batch 1)
    assert compare_models(fixed(), fixed()).ok


def test_npz_samples_on_the_first_axis(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x=rng.standard_normal((3, 1, 3, 16, 16)).astype(np.float32))
    samples, desc = load_samples(tmp_path / "s.npz", fixed())
    assert len(samples) == 3 and samples[0]["x"].shape == (1, 3, 16, 16)
    assert "3 sample(s)" in desc
    report = compare_models(fixed(), fixed(), samples, inputs_desc=desc)
    assert report.ok and report.inputs == desc


def _png_with_filter(img: np.ndarray, filt: int) -> bytes:
    h, w, c = img.shape
    raw = b""
    prev = np.zeros(w * c, np.int32)
    for y in range(h):
        row = img[y].reshape(-1).astype(np.int32)
        left = np.concatenate([np.zeros(c, np.int32), row[:-c]])
        upleft = np.concatenate([np.zeros(c, np.int32), prev[:-c]])
        if filt == 1:
            pred = left
        elif filt == 2:
            pred = prev
        elif filt == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([filt]) + ((row - pred) & 255).astype(np.uint8).tobytes()
        prev = row

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("filt", [1, 2, 3, 4])
def test_png_decoder_handles_every_filter(filt):
    img = np.random.default_rng(filt).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(read_png(_png_with_filter(img, filt)), img)


def test_image_folder_with_stated_preprocessing(tmp_path):
    img = np.zeros((20, 10, 3), np.uint8)
    img[..., 0] = 255  # pure red
    write_png(tmp_path / "a.png", img)
    write_png(tmp_path / "b.png", img // 2)
    pre = ImagePreprocess(mean=(0.5,), std=(0.25,))
    samples, desc = load_samples(tmp_path, fixed(), pre)
    assert len(samples) == 2
    x = samples[0]["x"]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert np.allclose(x[0, 0], (1.0 - 0.5) / 0.25) and np.allclose(x[0, 1], -2.0)
    assert "2 image(s)" in desc and "16x16" in desc and "mean 0.5" in desc and "NCHW" in desc
    bgr = load_samples(tmp_path, fixed(), ImagePreprocess(channels="bgr"))[0][0]["x"]
    assert np.allclose(bgr[0, 2], 1.0) and np.allclose(bgr[0, 0], 0.0)


def test_image_folder_errors_are_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="holds no image"):
        load_samples(tmp_path, fixed())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="not a readable image"):
        load_samples(tmp_path, fixed())
    with pytest.raises(BadInputError, match="no fixed height and width"):
        load_samples(tmp_path, dynamic_cnn())


def test_verify_pass_uses_given_samples():
    model = fixed()
    rng = np.random.default_rng(1)
    graph_samples = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}]
    from drpopt.passes.manager import load_graph

    graph = load_graph(model)
    context_of(graph).verify_inputs = (graph_samples, "one given sample")
    result = PassManager([VerifyPass()])(graph)
    assert result.verify.inputs == "one given sample"


def _zero_output(dim):
    """``y = x * 0``: an output that is zero whatever the input."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "zero"], ["y"])], "g", [x], [y])
    graph.initializer.append(zero)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_hint_asks_for_input_shapes_only_where_random_inputs_guessed_them():
    """Random inputs for a model with a symbolic dim take it as 1, and the report says so;
    a refusal then asks for real inputs and the shapes of real use. When every size is
    known (a static model, or one given --input-shape), it asks for real inputs only (it
    asked for --input-shape even when one was given: PP-OCRv4 det at 1x3x320x320)."""
    guessed = compare_models(_zero_output("batch"), _zero_output("batch"))
    assert "batch taken as 1" in guessed.inputs and not guessed.ok
    assert "(--input-shape)" in guessed.summary()
    known = compare_models(_zero_output(2), _zero_output(2))
    assert "taken as 1" not in known.inputs and not known.ok
    assert "--inputs" in known.summary() and "--input-shape" not in known.summary()
