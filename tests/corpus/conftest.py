"""One materialization and one analysis per corpus model, shared by all its checks.

``corpus_case`` is parametrized over the models of the corpus folder (``--corpus DIR``,
``$DRPOPT_CORPUS`` or ``../shared/corpus``) with module scope, so pytest runs every check of
one model before loading the next and holds one model in memory at a time. With no folder,
one test per check is collected and skipped with the reason.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from corpus_checks import CheckTimeout, time_limit
from deadchannels import random_feeds, run_model

from drpopt import analyze
from drpopt.ir.analysis import Analysis
from drpopt.passes import ScorePass
from drpopt.passes.analyses import scores_of
from drpopt.zoo.corpus import (
    DEFAULT_CANDIDATES,
    ENV_VAR,
    corpus_dir,
    corpus_models,
    load_corpus_model,
)

# Known failures of the analysis or the passes, {model: {check: reason}}. A check is
# "analyze", "rate0", "dead", "prune" (every plan) or "prune:<config>"; "*" is every check.
# xfail(strict=False): remove an entry when its fix lands. State of main 7763ef7.
KNOWN: dict[str, dict[str, str]] = {}
# Models too large for every plan within the CI budget: the plans they run.
HEAVY_PARAMS = 50_000_000
HEAVY_CONFIGS = ("rate0.5", "drpai")


@dataclass
class CorpusCase:
    """One corpus model, materialized and analysed once; the rest is computed on demand."""

    name: str
    path: Path
    model: onnx.ModelProto
    timeout: float
    analysis: Analysis | None = None
    analysis_error: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def require_analysis(self) -> Analysis:
        if self.analysis is None:
            pytest.fail(f"{self.name}: no analysis ({self.analysis_error})", pytrace=False)
        return self.analysis

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        if "feeds" not in self._cache:
            self._cache["feeds"] = random_feeds(self.model)
        return self._cache["feeds"]

    @property
    def reference(self) -> list[np.ndarray]:
        """The input model's outputs in onnxruntime."""
        if "reference" not in self._cache:
            self._cache["reference"] = run_model(self.model, self.feeds)
        return self._cache["reference"]

    @property
    def scores(self) -> dict[str, np.ndarray]:
        """Channel scores (l2) of every group, computed once: no plan changes them."""
        if "scores" not in self._cache:
            graph = self.require_analysis().graph
            ScorePass().call(graph)
            self._cache["scores"] = scores_of(graph)
        return self._cache["scores"]

    def skip_unless_planned(self, config: str) -> None:
        """Models over HEAVY_PARAMS parameters run only HEAVY_CONFIGS (the CI budget)."""
        params = sum(t.ByteSize() for t in self.model.graph.initializer) // 4
        if params > HEAVY_PARAMS and config not in HEAVY_CONFIGS:
            pytest.skip(
                f"{self.name} (~{params / 1e6:.0f}M parameters) runs only "
                f"{', '.join(HEAVY_CONFIGS)} to fit the CI budget"
            )

    def expect_known_failure(
        self, request: pytest.FixtureRequest, check: str, config: str | None = None
    ) -> None:
        """Marks this test xfail(strict=False) when KNOWN lists ``check`` for this model."""
        entry = KNOWN.get(self.name, {})
        reason = entry.get(f"{check}:{config}") or entry.get(check) or entry.get("*")
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=False))


def _folder(config: pytest.Config) -> tuple[Path | None, str]:
    option = config.getoption("--corpus")
    folder = corpus_dir(option)
    if option:
        tried = f"--corpus {option}"
    else:
        env = os.environ.get(ENV_VAR)
        tried = f"${ENV_VAR}={env}" if env else " or ".join(str(p) for p in DEFAULT_CANDIDATES)
    return folder, tried


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "corpus_case" not in metafunc.fixturenames:
        return
    folder, tried = _folder(metafunc.config)
    paths = corpus_models(folder) if folder is not None else []
    if not paths:
        why = f"no corpus: {tried} is not a folder of .onnx models"
        marks = [pytest.mark.skip(reason=why)]
        metafunc.parametrize(
            "corpus_case", [pytest.param(None, marks=marks, id="no-corpus")], indirect=True
        )
        return
    values = [pytest.param(p, id=p.stem) for p in paths]
    metafunc.parametrize("corpus_case", values, indirect=True, scope="module")


@pytest.fixture(scope="module")
def corpus_case(request: pytest.FixtureRequest):
    """The model of this parameter: materialized, then analysed under the time limit."""
    path: Path = request.param
    timeout = float(request.config.getoption("--corpus-timeout"))
    with time_limit(timeout * 2, f"loading {path.name}"):
        model = load_corpus_model(path)
    case = CorpusCase(path.stem, path, model, timeout)
    try:
        with time_limit(timeout, f"analysis of {path.name}"):
            case.analysis = analyze(model)
    except CheckTimeout as err:
        case.analysis_error = str(err)
    except Exception as err:  # reported by test_analysis, not here
        case.analysis_error = f"{type(err).__name__}: {err}"
    yield case
    case._cache.clear()
    del case, model
    gc.collect()
