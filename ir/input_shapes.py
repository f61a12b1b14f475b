"""Input shapes: which graph-input dims are symbolic, and fixing them before shape inference.

Rules:
- a dim is *unknown* when it has no positive ``dim_value`` (a ``dim_param`` such as
  ``"height"``, an empty dim, or a ``-1``/``0`` some exporters write);
- ``fix_input_shapes`` returns a copy whose named graph inputs have exactly the given dims;
  the given shape must have the input's rank and agree with every dim the model fixes; the
  copy's ``value_info`` is cleared (custom ops' outputs excepted) and its output dims
  are unset (elem types kept), so shape inference recomputes every intermediate shape from
  the new inputs instead of merging stale symbolic ones;
- ``None`` as a key means "the only input" (a bare shape for a single-input model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from drpopt.errors import BadInputError

Dim = int | str
Shapes = Mapping[str | None, Sequence[int]]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return "?" if not d.HasField("dim_value") else str(d.dim_value)


def input_dims(model: onnx.ModelProto) -> dict[str, list[Dim] | None]:
    """Per graph input its dims: ints where fixed, the symbol (or ``"?"``, ``"-1"``) where
    not; None when the input declares no shape at all."""
    out: dict[str, list[Dim] | None] = {}
    for info in graph_inputs(model):
        tt = info.type.tensor_type
        out[info.name] = [_dim(d) for d in tt.shape.dim] if tt.HasField("shape") else None
    return out


def symbolic_input_dims(model: onnx.ModelProto, skip_batch: bool = False) -> dict[str, list[int]]:
    """Per graph input with unknown dims, the axes that are unknown (axis 0 left out when
    ``skip_batch``: a batch of 1 is the usual meaning)."""
    out: dict[str, list[int]] = {}
    for name, dims in input_dims(model).items():
        if dims is None:
            continue
        axes = [a for a, d in enumerate(dims) if not isinstance(d, int)]
        if skip_batch:
            axes = [a for a in axes if a > 0]
        if axes:
            out[name] = axes
    return out


def concrete(dims: Sequence[Dim] | None) -> tuple[int, ...]:
    """Dims with every unknown one taken as 1 (what a random input of that shape uses)."""
    return tuple(d if isinstance(d, int) else 1 for d in dims or ())


def show(dims: Sequence[Dim] | None) -> str:
    """``1x3x640x640``, or ``(batch, 3, h, w)`` when some dims are symbols."""
    if dims is None:
        return "unknown shape"
    if all(isinstance(d, int) for d in dims):
        return "x".join(map(str, dims))
    return "(" + ", ".join(map(str, dims)) + ")"


def describe(dims: Mapping[str, Sequence[Dim] | None]) -> str:
    """``"x: 1x3x640x640, y: (N, 4)"`` for messages."""
    return ", ".join(f"{name}: {show(d)}" for name, d in dims.items())


def example(dims: Sequence[Dim] | None) -> str:
    """A ``--input-shape`` value to edit: fixed dims kept, batch 1, ``H``/``W`` for the
    spatial dims of a rank-4 input, ``D<axis>`` otherwise."""
    out = []
    for axis, d in enumerate(dims or ()):
        if isinstance(d, int):
            out.append(str(d))
        elif axis == 0:
            out.append("1")
        elif len(dims or ()) == 4 and axis in (2, 3):
            out.append("H" if axis == 2 else "W")
        else:
            out.append(f"D{axis}")
    return ",".join(out)


def resolve(model: onnx.ModelProto, shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """The given shapes keyed by real input names (``None`` -> the single input); raises
    ``BadInputError`` for an unknown name, a bare shape on a multi-input model, a rank that
    differs, a dim that is not positive, or one that contradicts a fixed dim of the model."""
    declared = input_dims(model)
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        if key is None:
            if len(declared) != 1:
                names = ", ".join(declared) or "none"
                raise BadInputError(
                    f"--input-shape: the model has {len(declared)} inputs ({names}); "
                    "name each one, e.g. --input-shape NAME:1,3,224,224"
                )
            key = next(iter(declared))
        if key not in declared:
            raise BadInputError(
                f"--input-shape {key}: the model has no input named {key!r} "
                f"(its inputs: {', '.join(declared) or 'none'})"
            )
        dims = tuple(int(d) for d in shape)
        if not dims or any(d < 1 for d in dims):
            raise BadInputError(f"--input-shape {key}: dims must be positive integers, got {dims}")
        have = declared[key]
        if have is not None:
            if len(have) != len(dims):
                raise BadInputError(
                    f"--input-shape {key}: {len(dims)} dims given, the input has rank "
                    f"{len(have)} ({'x'.join(map(str, have))})"
                )
            for axis, (want, given) in enumerate(zip(have, dims, strict=True)):
                if isinstance(want, int) and want != given:
                    raise BadInputError(
                        f"--input-shape {key}: dim {axis} is fixed to {want} by the model, "
                        f"got {given} ({'x'.join(map(str, have))})"
                    )
        out[key] = dims
    return out


def fix_input_shapes(model: onnx.ModelProto, shapes: Shapes) -> onnx.ModelProto:
    """A copy of ``model`` with the given graph inputs set to the given dims (see the module
    rules); the input model is not changed. An empty ``shapes`` returns ``model`` itself."""
    if not shapes:
        return model
    fixed = resolve(model, shapes)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for info in out.graph.input:
        dims = fixed.get(info.name)
        if dims is None:
            continue
        shape = info.type.tensor_type.shape
        shape.ClearField("dim")
        for d in dims:
            shape.dim.add().dim_value = d
    # custom ops' outputs keep their value_info: shape inference cannot compute them
    custom = {o for n in out.graph.node if n.domain not in ("", "ai.onnx") for o in n.output}
    keep = [v for v in out.graph.value_info if v.name in custom]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    for info in out.graph.output:
        if info.type.HasField("tensor_type"):
            info.type.tensor_type.ClearField("shape")
    return out
