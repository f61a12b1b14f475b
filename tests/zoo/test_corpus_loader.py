"""drpopt.zoo.corpus: which folder, which models, materialized or loaded as they are."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.zoo import build
from drpopt.zoo.corpus import ENV_VAR, corpus_dir, corpus_models, load_corpus_model

MATERIALIZE = """
import onnx
from onnx import numpy_helper
import numpy as np

def materialize(path, seed=0):
    model = onnx.load(path)
    for t in model.graph.initializer:
        if t.doc_string == "skeleton":
            arr = np.full(tuple(t.dims), float(seed + 1), dtype=np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return model
"""


def test_folder_option_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert corpus_dir() == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert corpus_dir(other) == other.resolve()
    assert corpus_dir(tmp_path / "absent") is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    assert corpus_dir() is None


def test_plain_models_load_as_they_are(tmp_path):
    model = build("se")
    onnx.save(model, str(tmp_path / "b.onnx"))
    onnx.save(model, str(tmp_path / "a.onnx"))
    (tmp_path / "notes.txt").write_text("not a model")
    assert [p.name for p in corpus_models(tmp_path)] == ["a.onnx", "b.onnx"]
    loaded = load_corpus_model(tmp_path / "a.onnx")
    assert loaded.SerializeToString() == onnx.load(str(tmp_path / "a.onnx")).SerializeToString()


def test_skeletons_are_materialized_with_the_folders_script(tmp_path):
    model = build("se")
    target = model.graph.initializer[0]
    target.doc_string = "skeleton"
    onnx.save(model, str(tmp_path / "se.onnx"))
    (tmp_path / "materialize.py").write_text(MATERIALIZE)
    for seed in (0, 3):
        loaded = load_corpus_model(tmp_path / "se.onnx", seed=seed)
        arr = numpy_helper.to_array(
            next(t for t in loaded.graph.initializer if t.name == target.name)
        )
        assert np.all(arr == seed + 1)
