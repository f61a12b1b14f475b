"""Intermediate activations on calibration data, through onnxruntime, one batch at a time.

Rules:
- any tensor of the model can be fetched: it is added as an extra graph output on a copy,
  and the copy keeps only the nodes the fetched tensors need (so early layers cost less);
- a model whose batch dimension is a fixed number (e.g. 1) is run on chunks of that size;
- nothing is kept across batches: callers reduce each batch (``ChannelMoments`` below)
  so memory is one batch's activations whatever the size of the data;
- a progress bar (rich, stderr) shows the batches; ``DRPOPT_NO_PROGRESS=1`` hides it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import onnx

from drpopt.errors import BadInputError
from drpopt.passes.calibrate import CalibrationData, InputSpec


def proto_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The non-initializer inputs of ``model`` as InputSpecs."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for info in model.graph.input:
        if info.name in inits:
            continue
        tt = info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = np.dtype(np.float32)
        out.append(InputSpec(info.name, dims, dtype))
    return out


def fetching(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names``, keeping only the nodes they need."""
    names = list(dict.fromkeys(names))
    producers = {o: n for n in model.graph.node for o in n.output}
    needed: set[int] = set()
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    todo = [producers[n] for n in names if n in producers]
    seen: set[str] = set()
    while todo:
        node = todo.pop()
        if id(node) in needed:
            continue
        needed.add(id(node))
        for i in node.input:
            if i and i in producers and i not in seen:
                seen.add(i)
                todo.append(producers[i])
        for attr in node.attribute:  # values a subgraph captures
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                for sub in g.node:
                    for i in sub.input:
                        if i in producers and i not in seen:
                            seen.add(i)
                            todo.append(producers[i])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = [n for n in model.graph.node if id(n) in needed]
    keep.sort(key=lambda n: index[id(n)])
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input} | set(names)
    for n in keep:
        for attr in n.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= {i for s in sub.node for i in s.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
    for vi in model.graph.value_info:
        types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    del g.output[:]
    for name in names:
        elem = types.get(name)
        if elem:
            g.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        else:  # untyped: onnxruntime infers it (a QDQ model's uint8 activations are no float)
            g.output.add().name = name
    return out


def session(model: onnx.ModelProto):
    """A CPU onnxruntime session (one intra-op thread unless OMP_NUM_THREADS says more)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # memory goes back after each batch
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise BadInputError(f"onnxruntime cannot load the model for calibration: {err}") from err


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr; yields the function that advances it by one."""
    if os.environ.get("DRPOPT_NO_PROGRESS") or total <= 1:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def run_batches(
    models: list[onnx.ModelProto],
    fetches: list[list[str]],
    data: CalibrationData,
    description: str = "calibration",
) -> Iterator[list[dict[str, np.ndarray]]]:
    """Runs every model on each calibration batch; yields, per batch, one ``{name: array}``
    dict per model with its ``fetches``. Models share the same input batch."""
    truncated = [fetching(m, f) for m, f in zip(models, fetches, strict=True)]
    sessions = [session(m) for m in truncated]
    specs = proto_inputs(models[0])
    chunk = _static_batch(specs)
    with progress(data.num_batches, description) as advance:
        for feeds in data.batches(specs):
            outs = []
            for sess, names in zip(sessions, fetches, strict=True):
                wanted = {i.name for i in sess.get_inputs()}
                local = {k: v for k, v in feeds.items() if k in wanted}
                outs.append(dict(zip(names, _run_chunked(sess, names, local, chunk), strict=True)))
            yield outs
            advance()


def _static_batch(specs: list[InputSpec]) -> int | None:
    dims = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return min(dims) if dims else None


def _run_chunked(sess, names: list[str], feeds: dict[str, np.ndarray], chunk: int | None):
    n = next(iter(feeds.values())).shape[0] if feeds else 1
    if chunk is None or chunk >= n:
        try:
            return sess.run(names, feeds)
        except Exception as err:
            raise BadInputError(f"onnxruntime cannot run the calibration batch: {err}") from err
    parts = []
    for lo in range(0, n, chunk):
        part = {k: v[lo : lo + chunk] for k, v in feeds.items()}
        parts.append(sess.run(names, part))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def fetch_chunks(graph, names: list[str], batch: int, budget: int | None = None) -> list[list[str]]:
    """``names`` cut into lists whose activations for one batch fit ``budget`` bytes
    (``DRPOPT_CALIB_MEMORY_MB``, default 512); each list costs one pass over the data."""
    if budget is None:
        budget = int(float(os.environ.get("DRPOPT_CALIB_MEMORY_MB", "512")) * 2**20)
    chunks: list[list[str]] = [[]]
    used = 0
    for name in names:
        v = graph.values.get(name)
        dims = [d if isinstance(d, int) else 1 for d in (v.shape or ())] if v else []
        if dims:
            dims[0] = batch  # the first axis is the batch (a fixed 1 runs in chunks)
        size = 4 * int(np.prod(dims)) if dims else 0
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    return chunks


class ChannelMoments:
    """Per-channel sums over every axis but ``axis``: mean, mean |x| and mean x^2."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.count = 0
        self.sum: np.ndarray | None = None
        self.abs: np.ndarray | None = None
        self.sq: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        moved = np.moveaxis(np.asarray(x), self.axis, 0).reshape(x.shape[self.axis], -1)
        s = moved.sum(1, dtype=np.float64)
        a = np.abs(moved).sum(1, dtype=np.float64)
        q = np.einsum("ij,ij->i", moved, moved, dtype=np.float64)
        if self.sum is None:
            self.sum, self.abs, self.sq = s, a, q
        else:
            self.sum += s
            self.abs += a
            self.sq += q
        self.count += moved.shape[1]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs / max(self.count, 1)

    @property
    def mean_sq(self) -> np.ndarray:
        return self.sq / max(self.count, 1)
