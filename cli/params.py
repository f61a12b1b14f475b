"""The command-line arguments and options of every command, declared once as ``Annotated``
aliases, so a command's signature is one short line per option (``rate: Rate = None``).

An alias keeps the flag, metavar and help text; the default stays in the command's
signature. Options several commands share with the same meaning and help (``--force``,
``--time-passes``) have one alias; one that reads differently per command has one each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ---- shared ------------------------------------------------------------------------------
Model = Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX model file")]
Force = Annotated[bool, typer.Option("--force", help="Allow -o to equal MODEL.")]
TimePasses = Annotated[bool, typer.Option("--time-passes", help="Time each pass.")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]

# ---- common (cli/options.py) -------------------------------------------------------------
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only errors and --json output (no tables, no progress)."
    ),
]
Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="Log details; tracebacks on errors.",
    ),
]
INPUT_SHAPE_HELP = (
    "Input dims, NAME:1,3,640,640 (repeat per input) or just 1,3,640,640 for a "
    "single-input model: fixes symbolic dims before shape inference; MACs and verification "
    "use them."
)
InputShape = Annotated[
    list[str] | None,
    typer.Option("--input-shape", metavar="[NAME:]DIMS", help=INPUT_SHAPE_HELP),
]
Inputs = Annotated[
    Path | None,
    typer.Option(
        "--inputs",
        metavar="NPZ|FOLDER",
        help="Verify on these inputs: an .npz (one array per input name; an "
        "extra first axis = samples) or a folder of images. Default: 2 "
        "random samples (standard normal) at the input shapes.",
    ),
]
ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        metavar="H,W",
        help="Resize images to this (default: the input's height, width).",
    ),
]
Mean = Annotated[
    str | None,
    typer.Option(
        "--mean", metavar="M[,M,M]", help="Subtracted per channel after scaling (default: 0)."
    ),
]
Std = Annotated[
    str | None,
    typer.Option(
        "--std", metavar="S[,S,S]", help="Divided per channel after the mean (default: 1)."
    ),
]
Scale = Annotated[
    float | None,
    typer.Option(
        "--scale", metavar="FACTOR", help="Pixel values times this first (default: 1/255)."
    ),
]
Layout = Annotated[
    str | None,
    typer.Option(
        "--layout", metavar="nchw|nhwc", help="Image tensor layout (default: from the input)."
    ),
]
Bgr = Annotated[bool, typer.Option("--bgr", help="Feed channels as BGR (default RGB).")]

# ---- analyze -----------------------------------------------------------------------------
AnalyzeModel = Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX model file (.onnx)")]
AnalyzeJson = Annotated[bool, typer.Option("--json", help="Print the analysis as JSON on stdout.")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 1 if any op has no coupling rule.")]
CountZeros = Annotated[
    bool,
    typer.Option(
        "--count-zeros",
        help="Also count the zero weights (nonzero parameters, MACs with zeros skipped); "
        "reads every weight, which the analysis alone never does.",
    ),
]
Limit = Annotated[
    int | None,
    typer.Option("--limit", metavar="N", help="Show at most this many groups.", min=1),
]

# ---- passes, run -------------------------------------------------------------------------
PassesJson = Annotated[bool, typer.Option("--json", help="Print the passes as JSON.")]
Pipeline = Annotated[
    str,
    typer.Option("--pipeline", "-p", metavar="PASSES", help="Pass list or a .toml pipeline file."),
]
RunOutput = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write the result here."),
]
DumpDir = Annotated[
    Path | None,
    typer.Option("--dump-dir", metavar="DIR", help="Write the model after each pass here."),
]
RunJson = Annotated[bool, typer.Option("--json", help="Print what each pass did as JSON.")]

# ---- prune -------------------------------------------------------------------------------
PruneOutput = Annotated[
    Path,
    typer.Option("--output", "-o", metavar="FILE", help="Write the pruned model here."),
]
Rate = Annotated[
    float | None,
    typer.Option(
        "--rate",
        "-r",
        metavar="RATE",
        help="Fraction of eligible channels to remove, in [0, 1) "
        "(default: the target's: generic 0.5, drpai 0.7).",
        show_default=False,
    ),
]
PruneTarget = Annotated[
    str, typer.Option("--target", metavar="NAME", help="Target profile or .toml path.")
]
CompactFlag = Annotated[
    bool, typer.Option("--compact", help="Remove pruned channels (any runtime).")
]
SparseFlag = Annotated[
    bool,
    typer.Option(
        "--sparse",
        help="Keep dense shapes with zeros (DRP-AI). Default: the target's form "
        "(generic compact, drpai sparse).",
    ),
]
Criterion = Annotated[
    str | None,
    typer.Option(
        "--criterion",
        metavar="NAME",
        help="l1, l2, bn-gamma, random, activation, reconstruction "
        "(default: l2; reconstruction with --calib).",
    ),
]
Allocation = Annotated[str, typer.Option("--allocation", metavar="NAME", help="uniform or global.")]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="PATTERN",
        help="Layer name pattern (fnmatch) to leave dense; must match a layer. "
        "Repeat it or separate patterns with ','.",
    ),
]
Plan = Annotated[
    Path | None,
    typer.Option("--plan", metavar="FILE", help="Apply this saved plan instead."),
]
PlanOut = Annotated[
    Path | None,
    typer.Option("--plan-out", metavar="FILE", help="Save the plan as JSON here."),
]
PruneRtol = Annotated[
    float,
    typer.Option(
        "--rtol",
        metavar="TOL",
        help="Verification tolerance, relative to the reference output's spread.",
    ),
]
Calib = Annotated[
    Path | None,
    typer.Option(
        "--calib",
        metavar="DATA",
        help="Calibration inputs (an .npz of input batches or a folder of images): "
        "data-aware scores, reconstruction, and a drift report on held-out batches.",
    ),
]
CalibOpts = Annotated[
    str,
    typer.Option(
        "--calib-opts",
        metavar="OPTS",
        help="calibrate arguments, e.g. 'size=224|224:mean=0.485|0.456|0.406:"
        "std=0.229|0.224|0.225:order=rgb:layout=nchw:batch=16:holdout=0.2'.",
    ),
]
Post = Annotated[
    str | None,
    typer.Option(
        "--post",
        metavar="NAME",
        help="reconstruct, bias-correct or none after masking "
        "(default: reconstruct with --calib, none without).",
    ),
]

# ---- verify ------------------------------------------------------------------------------
Reference = Annotated[Path, typer.Argument(metavar="REFERENCE", help="Reference ONNX model (A).")]
CheckedModel = Annotated[
    Path, typer.Argument(metavar="MODEL", help="ONNX model to check against it (B).")
]
VerifyRtol = Annotated[
    float,
    typer.Option(
        "--rtol",
        metavar="TOL",
        help="Tolerance relative to the reference output's spread (its range, max - min).",
    ),
]
Atol = Annotated[float, typer.Option("--atol", metavar="TOL", help="Absolute tolerance.")]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the random inputs.")]
Samples = Annotated[
    int, typer.Option("--samples", metavar="N", min=1, help="Random input samples to run.")
]
ReportOnly = Annotated[
    bool,
    typer.Option(
        "--report-only",
        help="Report the drift (max, mean error, cosine per output) and exit 0: for "
        "an original against its pruned model, whose outputs differ by design.",
    ),
]
VerifyJson = Annotated[bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")]

# ---- targets, check ----------------------------------------------------------------------
TargetsJson = Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")]
CheckTarget = Annotated[
    str, typer.Option("--target", metavar="NAME", help="Profile name or .toml path.")
]
MinSparsity = Annotated[
    float | None,
    typer.Option(
        "--min-sparsity",
        metavar="SHARE",
        help="Required share of zero weights (default: the profile's).",
    ),
]
CheckJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]

# ---- report ------------------------------------------------------------------------------
ReportModel = Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX model file to describe.")]
ReportOutput = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write the HTML report here."),
]
Compare = Annotated[
    Path | None,
    typer.Option(
        "--compare",
        metavar="OTHER",
        help="A second model to show beside MODEL: the masked model a compact one "
        "came from (checked), or the unpruned original (drift reported).",
    ),
]
Png = Annotated[
    Path | None,
    typer.Option("--png", metavar="FILE", help="Also write the charts alone as a PNG."),
]
ReportRtol = Annotated[
    float,
    typer.Option("--rtol", metavar="TOL", help="Verification tolerance (x spread)."),
]
ReportJson = Annotated[
    bool, typer.Option("--json", help="Print the figures (and comparison) as JSON.")
]

# ---- export ------------------------------------------------------------------------------
Builder = Annotated[
    str,
    typer.Argument(
        metavar="BUILDER",
        help="module:function or path/to/file.py:function that returns the model.",
    ),
]
ExportInputShape = Annotated[
    list[str],
    typer.Option(
        "--input-shape",
        "-s",
        metavar="DIMS",
        help="Example input shape, e.g. 1,3,224,224 (repeat for several inputs).",
    ),
]
ExportOutput = Annotated[
    Path, typer.Option("--output", "-o", metavar="FILE", help="Write the ONNX here.")
]
Checkpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", "-c", metavar="FILE", help="State dict to load (torch.save file)."
    ),
]
CompactOrSparse = Annotated[
    bool | None,
    typer.Option(
        "--compact/--sparse",
        help="Remove pruned channels, or keep dense shapes with zeros "
        "(default: the target's form; sparse without --target).",
    ),
]
Opset = Annotated[
    int | None,
    typer.Option(
        "--opset", metavar="N", help="ONNX opset (default: the target's, else 17).", min=7
    ),
]
ExportTarget = Annotated[
    str | None,
    typer.Option("--target", metavar="NAME", help="Target profile: its export form and opset."),
]
BuilderArg = Annotated[
    list[str] | None,
    typer.Option(
        "--builder-arg", "-a", metavar="KEY=VALUE", help="key=value passed to BUILDER (repeat)."
    ),
]
ExportRtol = Annotated[
    float,
    typer.Option("--rtol", metavar="TOL", help="Tolerance relative to max|torch output|."),
]
TrustCheckpoint = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Load a checkpoint holding Python objects (full pickle: runs its code).",
    ),
]
InputNames = Annotated[
    list[str] | None,
    typer.Option("--input-names", metavar="NAME", help="Graph input name (repeat), e.g. images."),
]
OutputNames = Annotated[
    list[str] | None,
    typer.Option("--output-names", metavar="NAME", help="Graph output name (repeat)."),
]
FoldBatchNorm = Annotated[
    bool | None,
    typer.Option(
        "--fold-batchnorm/--keep-batchnorm",
        help="Fold BatchNorm into the layer before it (default: on for sparse "
        "--target exports such as drpai, off otherwise).",
    ),
]

# ---- demo --------------------------------------------------------------------------------
DemoModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="NAME",
        help="Instead of the digits flow, prune a bundled ONNX example "
        "(yolox_s_like, resnet50, ...) one-shot.",
    ),
]
DemoRate = Annotated[
    float, typer.Option("--rate", "-r", metavar="RATE", help="Pruning rate for the demo.")
]
DemoOut = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        "--out",
        metavar="DIR",
        help="Keep the demo's ONNX files in this folder (digits flow).",
    ),
]
DemoSave = Annotated[
    Path | None,
    typer.Option("--save", metavar="FILE", help="With --model: keep the example ONNX here."),
]
DemoJson = Annotated[
    bool, typer.Option("--json", help="Print the results as JSON (progress on stderr).")
]
