"""The unseen-architecture checks (``unseen_battery.py``) on round 5c's generative, depth,
flow, language and speech models (``tests/ir/round5c_torch.py``, ``round5c_seq_torch.py``,
``round5c_cond_torch.py``): a diffusers UNet2DModel, Stable Diffusion's
UNet2DConditionModel and AutoencoderKL's decoder, a StyleGAN2 generator (modulated convs),
CycleGAN's ResnetGenerator, DPT/MiDaS, RAFT-small, GPT-2 (as optimum exports it: token ids
and an attention mask, dynamic axes, also left dynamic, with its key/value cache, and
through onnxruntime's transformers optimizer),
Whisper's encoder, TC-ResNet8, DeepSpeech2 and Conv-TasNet, each exported as its project does;
``-m slow`` adds the dynamo exports.

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, compact_counts
from deadchannels import assert_groups_complete, random_feeds
from unseen_battery import OUTPUT, battery, check_exact

from drpopt import analyze

G, S, C = "round5c_torch", "round5c_seq_torch", "round5c_cond_torch"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # time embedding added per channel after conv1, GroupNorm(32) over cat(h, skip) with
    # groups straddling the two (96 channels: groups of 3 across 64 | 32), GroupNorm
    # attention over h * w tokens, nearest upsampling: everything but the image prunes
    "diffusion_unet": (G, "diffusion_unet", 0.99, 0.3, {OUTPUT}),
    "vae_decoder": (G, "vae_decoder", 0.99, 0.3, {OUTPUT}),
    # modulated convs (the weight computed from the style at run time, demodulated,
    # reshaped into the conv's weight): its rows produce and its columns read (the conv's
    # roles pass back through the Reshape and the Muls); the RGB channels stay, locked by
    # ToRGB's zero-stuffed upsampling (ScatterND) and upfirdn2d's reshape of the channels
    # into the batch
    "stylegan2": (G, "stylegan2", 0.99, 0.3, {"ScatterND", "Reshape", OUTPUT}),
    # InstanceNorm (no affine), reflection padding, ConvTranspose with output_padding
    "cyclegan": (G, "cyclegan", 0.99, 0.3, {OUTPUT}),
    # Stable Diffusion's: Transformer2D blocks (self- and cross-attention, the keys and values
    # of a text context of another width: their heads prune with the queries'), GEGLU
    # (chunk halves pair up: one group of the inner width)
    "sd_unet": (C, "sd_unet", 0.99, 0.3, {OUTPUT}),
    # ViT taps with the project readout (class token concatenated to every token), maps
    # resized by ConvTranspose / strided conv, fusion blocks with align_corners upsampling
    "dpt": (S, "dpt", 0.99, 0.3, {OUTPUT}),
    # one feature encoder for both images (batch concat, split), the correlation
    # fmap1^T @ fmap2 over the feature channels (they prune as the contraction of q @ k^T),
    # grid_sample lookups, the ConvGRU over cat(h, x); the 2 flow channels stay
    "raft": (S, "raft", 0.99, 0.32, {OUTPUT}),
    # heads of the fused c_attn (Gemm of a Conv1D) and the MLP prune, the residual width
    # too; the vocabulary (lm_head's output) stays
    "gpt2": (S, "gpt2", 0.99, 0.35, {OUTPUT}),
    "gpt2_dynamic": (S, "gpt2", 0.99, 0.35, {OUTPUT}),
    # optimum's decoder_with_past: the heads of q/k/v stay, locked by the cache's inputs and
    # outputs (past_key_values, present); the MLP and the residual width prune
    "gpt2_with_past": (C, "gpt2_with_past", 0.99, 0.4, {"graph input", OUTPUT}),
    # through onnxruntime's transformers optimizer: a chain of SkipLayerNormalization (the
    # residual stream through their sums; masked in the sparse model, each one) and FastGelu;
    # with the cache, the heads lock as in gpt2_with_past (its default level: below)
    "gpt2_ort": (C, ("gpt2_ort", 0), 0.99, 0.35, {OUTPUT}),
    "gpt2_with_past_ort": (C, ("gpt2_ort", 0, True), 0.99, 0.4, {"graph input", OUTPUT}),
    # the encoder's output width (the residual stream, read by the decoder) stays: about
    # 0.05 of the parameters
    "whisper_encoder": (S, "whisper_encoder", 0.94, 0.55, {OUTPUT}),
    # bidirectional LSTMs whose directions are summed (view(T, N, 2, -1).sum(2)): hidden
    # units prune alike in both; the direction axis (2) and the 29 labels stay
    "deepspeech2": (C, "deepspeech2", 0.99, 0.3, {"LSTM", "merges axis", "Softmax", OUTPUT}),
    # Conv-TasNet: gLN (mean over the channels, then the time steps) and cLN prune with
    # masked statistics; the mask conv's C * N outputs viewed as (C, N) pair each source's
    # N with the encoder's N channels; the sources are folded into the batch for the
    # ConvTranspose1d decoder (the output has no channel axis: nothing locks)
    "conv_tasnet": (C, "conv_tasnet", 0.99, 0.32, {OUTPUT}),
    # the classifier's 12 classes stay (a Softmax over them, the graph output)
    "tc_resnet": (S, "tc_resnet", 0.99, 0.3, {"Softmax", OUTPUT}),
}
SLOW = {"dpt", "raft", "sd_unet", "gpt2_dynamic", "gpt2_with_past_ort"}
DYNAMO = ["sd_unet", "stylegan2", "cyclegan", "gpt2", "gpt2_with_past", "whisper_encoder"]
DYNAMO += ["deepspeech2", "conv_tasnet"]


def _build(name: str, dynamo: bool = False) -> onnx.ModelProto:
    module, builder = MODELS[name][:2]
    if isinstance(builder, tuple):  # through onnxruntime's optimizer (its own imports)
        pytest.importorskip("onnxruntime.transformers.optimizer", reason="no ORT transformers")
        builder, *args = builder
        return getattr(importlib.import_module(module), builder)(*args)
    kw = {"fix": False} if name == "gpt2_dynamic" else {}
    return getattr(importlib.import_module(module), builder)(dynamo=dynamo, **kw)


def _token_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Token ids in the vocabulary and a mask of ones but the first position (8 of each
    where the sequence axis is left symbolic); a key/value cache random."""
    feeds = random_feeds(model)
    rng = np.random.default_rng(0)
    symbolic = model.graph.input[0].type.tensor_type.shape.dim[1].HasField("dim_param")
    ids, mask = (
        ((1, 8), (1, 8)) if symbolic else (feeds["input_ids"].shape, feeds["attention_mask"].shape)
    )
    feeds["input_ids"] = rng.integers(0, 96, ids, dtype=np.int64)
    feeds["attention_mask"] = np.ones(mask, dtype=np.int64)
    feeds["attention_mask"][:, 0] = 0
    return feeds


corpus = pytest.mark.corpus
BATTERY = battery(
    MODELS,
    _build,
    slow=SLOW,
    marks=[corpus],
    feeds={n: _token_feeds for n in MODELS if n.startswith("gpt2")},
)
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


@corpus
@pytest.mark.slow
@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_exports_prune_like_torchscript_ones(name):
    """torch's default (dynamo) exporter on the same models: the coverage of the TorchScript
    export, exact compaction at every config, no incomplete group."""
    model = _build(name, dynamo=True)
    a, ts = analyze(model), analysis(name)
    # the prunable parameters, or their share: dynamo counts StyleGAN2's zero-stuffing
    # buffers as tensors (share 0.97), and gathers GPT-2's 8 positions from wpe at export
    # (fewer parameters in all)
    assert (
        a.prunable_params >= ts.prunable_params - 0.01 * ts.params
        or a.prunable_params / a.params >= ts.prunable_params / ts.params - 0.01
    )
    assert_groups_complete(a, model)
    feeds = (_token_feeds if name.startswith("gpt2") else random_feeds)(model)
    for config in CONFIGS:
        pruned = check_exact(model, config, feeds)
        if config == "rate0.5":
            assert compact_counts(pruned.compact)[0] / pruned.before.params <= MODELS[name][3]


@corpus
def test_gpt2_at_the_ort_optimizers_default_level_prunes_every_plan():
    """The optimizer's default level also writes a LayerNormalization into the opset-13
    model (onnxruntime registers it there; ONNX defines it from 17): typed by its first
    definition, the model prunes like the export, exactly, at every config (not at rate 0:
    the written model would keep that LayerNormalization, which onnx.checker refuses as it
    refuses the input)."""
    pytest.importorskip("onnxruntime.transformers.optimizer", reason="no ORT transformers")
    from round5c_cond_torch import gpt2_ort

    model = gpt2_ort(opt_level=None)
    assert "LayerNormalization" in {n.op_type for n in model.graph.node}
    a = analyze(model)
    assert a.prunable_params == a.params and not a.unsupported
    assert_groups_complete(a, model)
    feeds = _token_feeds(model)
    for config in CONFIGS:
        pruned = check_exact(model, config, feeds)
        if config == "rate0.5":
            assert compact_counts(pruned.compact)[0] / pruned.before.params <= 0.35
