"""Options every command shares, added by decorators so each is declared once.

- ``-q/--quiet`` and ``-v/--verbose`` on every command (``common``): -q hides progress and
  tables (``--json`` and errors still print), -v shows library log messages and, on a
  failure, the traceback;
- ``--input-shape NAME:DIMS`` on every ONNX command (``shape_option``): fixes symbolic input
  dims before shape inference; the command receives ``input_shapes`` as a dict;
- ``--inputs`` and the image preprocessing options on every verifying command
  (``inputs_options``): the command receives ``inputs`` as an ``InputsSpec`` or None.

Errors: any exception becomes one line on stderr (``error: ...``) and an exit code: the
error's own (1 failed check, 2 bad input), 2 for anything unexpected (with -v: the
traceback first). Typer's and click's own exits pass through.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from drpopt.cli.params import (
    Bgr,
    ImageSize,
    Inputs,
    InputShape,
    Layout,
    Mean,
    Quiet,
    Scale,
    Std,
    Verbose,
)
from drpopt.errors import BadInputError, DrpoptError

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException as _ClickException

    _CLICK: tuple[type[BaseException], ...] = (_ClickException,)
except ImportError:  # pragma: no cover
    _CLICK = ()

STATE: dict[str, Any] = {"verbose": 0, "quiet": False, "root_verbose": 0, "root_quiet": False}
# seconds of work before a progress bar shows (tests set DRPOPT_PROGRESS_DELAY=0)
PROGRESS_DELAY = float(os.environ.get("DRPOPT_PROGRESS_DELAY", "1.0"))


# ---- signature surgery -------------------------------------------------------------------
def _add_params(
    fn: Callable[..., Any],
    extra: list[inspect.Parameter],
    pack: Callable[[dict], dict],
    provides: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """A wrapper whose signature is ``fn``'s plus ``extra`` (keyword options) less
    ``provides``; ``pack`` turns the extra values into the keyword arguments (``provides``)
    ``fn`` receives."""
    sig = inspect.signature(fn, eval_str=True)
    names = {p.name for p in extra}
    hidden = names | set(provides)
    params = [p for p in sig.parameters.values() if p.name not in hidden]
    # typer wants defaults after non-defaults only for positional use; options are keywords
    params += extra

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {n: kwargs.pop(n) for n in list(kwargs) if n in names}
        kwargs.update(pack(given))
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _opt(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


# ---- -q / -v and errors ------------------------------------------------------------------
class _StderrHandler(logging.Handler):
    """Log records as ``warning: ...`` on the current sys.stderr (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # never fail on a log line
            sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")


_HANDLER = _StderrHandler()


def _setup_logging(verbose: int, quiet: bool) -> None:
    logger = logging.getLogger("drpopt")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.propagate = False
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logger.setLevel(level if verbose or quiet else logging.WARNING)


def one_line(err: BaseException, limit: int = 600) -> str:
    text = " / ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text or type(err).__name__
    return text[:limit] + (" ..." if len(text) > limit else "")


def fail(message: str, code: int) -> None:
    """Prints ``error: message`` on stderr and exits with ``code``."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, soft_wrap=True)
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


def _report(err: BaseException) -> None:
    """Ends the command with ``err`` as one ``error:`` line and its exit code (2 for
    anything that is no ``DrpoptError``); under -v the traceback comes first."""
    if STATE["verbose"] and not isinstance(err, KeyboardInterrupt):
        traceback.print_exc(file=sys.stderr)
    if isinstance(err, DrpoptError):
        fail(one_line(err), err.exit_code)
    if isinstance(err, KeyboardInterrupt):
        fail("interrupted", 130)
    if isinstance(err, RecursionError):
        fail(f"the model is too deeply nested to process ({one_line(err, 200)})", 2)
    fail(
        f"cannot process the input ({type(err).__name__}: {one_line(err, 300)}); "
        "run with -v for the traceback",
        2,
    )


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds -q/-v to a command and turns every failure into one line and an exit code."""

    def pack(given: dict) -> dict:
        # given before the command (drpopt -q prune ...) or after it
        STATE["verbose"] = (given.get("verbose", 0) or 0) + STATE["root_verbose"]
        STATE["quiet"] = bool(given.get("quiet", False)) or STATE["root_quiet"]
        _setup_logging(STATE["verbose"], STATE["quiet"])
        return {}

    inner = _add_params(fn, [_opt("quiet", Quiet, False), _opt("verbose", Verbose, 0)], pack)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except (typer.Exit, typer.Abort, *_CLICK):
            raise
        except (Exception, KeyboardInterrupt) as err:
            _report(err)

    wrapper.__signature__ = inner.__signature__  # type: ignore[attr-defined]
    return wrapper


# every command: -q/-v, and any failure as one line with its exit code
handle_errors = common


def console_for(stderr: bool = False) -> Console:
    """The console a command prints on: stdout, or stderr (when stdout carries --json).
    Errors stay on one line whatever the terminal width; -q silences both."""
    if stderr:
        return Console(stderr=True, soft_wrap=True, quiet=quiet())
    return Console(quiet=quiet())


def quiet() -> bool:
    return bool(STATE["quiet"])


# ---- --input-shape -----------------------------------------------------------------------
def parse_input_shapes(items: list[str] | None) -> dict[str | None, tuple[int, ...]]:
    """``["x:1,3,640,640"]`` -> ``{"x": (1, 3, 640, 640)}``; a bare ``"1,3,224,224"`` keys
    None (the model's only input). Dims are positive integers, separated by ``,`` or ``x``."""
    out: dict[str | None, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        key = name.strip() if sep else None
        if sep and not key:
            raise BadInputError(f"--input-shape {item!r}: give NAME:DIMS or DIMS")
        parts = [p.strip() for p in dims.replace("x", ",").split(",")]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise BadInputError(
                f"--input-shape {item!r}: give positive integers separated by commas, "
                "e.g. x:1,3,640,640 (or 1,3,640,640 for a single-input model)"
            )
        if key in out:
            raise BadInputError(f"--input-shape: {key or 'the input'} given twice")
        out[key] = shape
    if None in out and len(out) > 1:
        raise BadInputError("--input-shape: a bare shape only works alone (one-input models)")
    return out


def shape_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--input-shape`` (repeatable); the command receives ``input_shapes``."""

    def pack(given: dict) -> dict:
        return {"input_shapes": parse_input_shapes(given.get("input_shape"))}

    return _add_params(fn, [_opt("input_shape", InputShape, None)], pack, ("input_shapes",))


def shape_warning(model: Any, given: dict) -> str | None:
    """One line naming the unknown non-batch input dims ``model`` still has, or None."""
    from drpopt.ir.input_shapes import input_dims

    return dims_warning(input_dims(model))


def layout_warning(graph: Any) -> str | None:
    """One line when ``graph`` holds onnxruntime's NCHWc layout (``ir/rules_ort.py``), else
    None: every channel it touches stays locked, and only onnxruntime runs the model."""
    from drpopt.ir.rules_ort import nchwc_nodes

    nodes = nchwc_nodes(graph)
    if not nodes:
        return None
    return (
        f"{len(nodes)} nodes are in onnxruntime's NCHWc blocked layout (com.microsoft.nchwc, "
        f"e.g. {nodes[0].op_type} '{nodes[0].name}'; saved at ORT_ENABLE_ALL, runnable only "
        "by onnxruntime on a CPU like the one that saved it): their channels stay locked; "
        "save the model at ORT_ENABLE_EXTENDED to prune it"
    )


def dims_warning(dims: dict[str, Any]) -> str | None:
    """``shape_warning`` from the input dims (``input_dims``, a graph's
    ``meta["input_shapes"]``): one line naming the unknown non-batch dims, or None."""
    from drpopt.ir.input_shapes import example, show

    unknown = {
        name: [a for a, d in enumerate(ds) if a > 0 and not isinstance(d, int)]
        for name, ds in dims.items()
        if ds is not None
    }
    unknown = {name: axes for name, axes in unknown.items() if axes}
    if not unknown:
        return None
    parts = []
    for name, axes in unknown.items():
        parts.append(f"'{name}' {show(dims[name])} (axes {', '.join(map(str, axes))})")
    name = next(iter(unknown))
    return (
        f"symbolic input dims of {', '.join(parts)} count as 1, so MACs and shapes are not "
        f"those of real use; give the real ones: --input-shape {name}:{example(dims[name])}"
    )


def probe_folder(path: Path, option: str) -> None:
    """Makes the output folder ``path`` (``option`` names it in the error) now, before any
    long work; ``BadInputError`` when it is a file or cannot be made or written."""
    from drpopt.errors import BadInputError
    from drpopt.ir.files import probe_writable

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{path}: is not a folder; {option} takes a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise BadInputError(
            f"{path}: cannot make the folder ({why}); choose a writable {option} folder"
        ) from err
    probe_writable(path / "probe.onnx")


def warn(message: str) -> None:
    """A one-line warning on stderr (shown under -q too: it changes what figures mean)."""
    sys.stderr.write(f"warning: {message}\n")


# ---- --inputs ----------------------------------------------------------------------------
@dataclass
class InputsSpec:
    """Where verification inputs come from and how images are preprocessed."""

    path: Path
    preprocess: Any  # passes.inputs.ImagePreprocess

    def load(self, model: Any) -> tuple[list[dict], str]:
        from drpopt.passes.inputs import load_samples

        return load_samples(self.path, model, self.preprocess)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise BadInputError(f"--{what} {text!r}: give numbers separated by commas") from None
    return values


_PREPROCESS = ("image_size", "mean", "std", "scale", "layout")


def _inputs_spec(g: dict) -> InputsSpec | None:
    """``--inputs`` and its preprocessing options (``g``, by parameter name) as a spec."""
    from drpopt.passes.inputs import ImagePreprocess

    path = g.get("inputs")
    pre_given = any(g.get(k) is not None for k in _PREPROCESS) or g.get("bgr")
    if path is None:
        if pre_given:
            raise BadInputError(
                "--image-size, --mean, --std, --scale, --layout and --bgr preprocess "
                "the images of --inputs FOLDER; give --inputs"
            )
        return None
    if pre_given and not Path(path).is_dir():
        raise BadInputError(
            f"--inputs {path}: image preprocessing options apply to a folder of images, "
            "not to an .npz"
        )
    if not Path(path).exists():
        raise BadInputError(f"--inputs {path}: no such file or folder")
    size = None
    if g.get("image_size"):
        dims = parse_input_shapes([g["image_size"]])[None]
        if len(dims) != 2:
            raise BadInputError(f"--image-size {g['image_size']!r}: give H,W")
        size = (dims[0], dims[1])
    pre = ImagePreprocess(
        size=size,
        mean=_floats(g.get("mean"), "mean") or (0.0,),
        std=_floats(g.get("std"), "std") or (1.0,),
        scale=1.0 / 255.0 if g.get("scale") is None else float(g["scale"]),
        layout=g.get("layout"),
        channels="bgr" if g.get("bgr") else "rgb",
    )
    return InputsSpec(Path(path), pre)


def inputs_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--inputs`` and image preprocessing; the command receives ``inputs``."""
    extra = [
        _opt("inputs", Inputs, None),
        _opt("image_size", ImageSize, None),
        _opt("mean", Mean, None),
        _opt("std", Std, None),
        _opt("scale", Scale, None),
        _opt("layout", Layout, None),
        _opt("bgr", Bgr, False),
    ]
    return _add_params(fn, extra, lambda g: {"inputs": _inputs_spec(g)}, ("inputs",))


# ---- progress ----------------------------------------------------------------------------
class Steps:
    """A rich progress bar on stderr that appears only after ``PROGRESS_DELAY`` seconds of
    work (so quick commands stay quiet), also when stdout is piped; nothing under -q."""

    def __init__(self, total: int, description: str = "working") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.enabled = not quiet()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task(description, total=total)
        self.timer: threading.Timer | None = None
        self.started = False
        self.lock = threading.Lock()
        self.closed = False

    def _start(self) -> None:
        with self.lock:
            if not self.closed:
                self.started = True
                self.progress.start()

    def __enter__(self) -> Steps:
        if self.enabled:
            delay = float(os.environ.get("DRPOPT_PROGRESS_DELAY", PROGRESS_DELAY))
            self.timer = threading.Timer(delay, self._start)
            self.timer.daemon = True
            self.timer.start()
        return self

    def update(self, description: str, advance: int = 0, total: int | None = None) -> None:
        self.progress.update(self.task, description=description, advance=advance, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.closed = True
            if self.started:
                self.progress.stop()


@contextmanager
def steps(total: int, description: str = "working") -> Iterator[Steps]:
    with Steps(total, description) as s:
        yield s
