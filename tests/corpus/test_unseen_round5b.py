"""The unseen-architecture checks (``unseen_battery.py``) on round 5b's detectors, segmenters
and OCR models (``tests/ir/round5b_torch.py``, ``round5b_det_torch.py``,
``round5b_seg_torch.py``, ``round5b_ocr_torch.py``, ``round5b_bilateral_torch.py``,
``round5b_dense_torch.py``): YOLOv9/GELAN, PP-YOLOE, SSD300 with L2Norm, RetinaNet with heads
shared by the levels, YOLACT's mask assembly, SOLOv2's and CondInst's dynamic kernels, ENet
(max-unpool by indices, dynamo), DDRNet, PIDNet, STDC, Fast-SCNN, UPerNet, U^2-Net, CRAFT,
DBNet++ (ASF), DeepLabV3+ and SVTR with its CTC head, each exported as its project does (opset,
dynamic batch, post-processing kept in the graph).

Per model: the analysis names every lock (and only the expected reasons); rate 0 is
bit-identical; every plan of ``CONFIGS`` gives compact outputs equal to the sparse ones (1e-4
of the spread) with the parameters and MACs the plan says; the dead-channel check holds on
every prunable group; and the coverage is what the architecture allows.
"""

from __future__ import annotations

import pytest
from unseen_battery import OUTPUT, battery, by_module

D, DT = "round5b_torch", "round5b_det_torch"
S, OC = "round5b_seg_torch", "round5b_ocr_torch"
B, DN = "round5b_bilateral_torch", "round5b_dense_torch"
# the per-anchor prediction convs' outputs, merged with the anchors by the head's reshape
MERGES = "merges axis 1 of"
# name -> (module, builder, min prunable share, max params ratio at 0.5, allowed lock reasons)
MODELS = {
    # RepNCSPELAN4 chunks, ADown halves, SPPELAN; the DFL conv reads the 4 box sides
    "yolov9": (D, "yolov9", 0.99, 0.28, {"'/detect/dfl/conv/Conv'", OUTPUT}),
    # ESE attention, ET-head (cls reads stem + feat), proj_conv over the softmax bins
    "ppyoloe": (D, "ppyoloe", 0.99, 0.32, {"/head/proj_conv", OUTPUT}),
    # L2Norm over conv4_3's channels prunes with it; only the prediction convs (anchors x
    # classes / box sides merged by the head's view) stay
    "ssd300": (DT, "ssd300", 0.9, 0.39, {MERGES, OUTPUT}),
    # the class / box predictors, shared by the five levels, merged with the anchors
    "retinanet": (DT, "retinanet", 0.97, 0.3, {MERGES, OUTPUT}),
    # max-unpool by flattened indices (ScatterND, channel offsets a constant): the streams
    # the pooling indices come from lock, the bottlenecks' inner widths prune
    "enet": (S, "enet", 0.75, 0.5, {"ScatterND", "graph input", OUTPUT}),
    "ddrnet": (S, "ddrnet", 0.99, 0.27, {OUTPUT}),
    "u2net": (S, "u2net", 0.99, 0.27, {OUTPUT}),
    "craft": (OC, "craft", 0.99, 0.27, {OUTPUT}),
    "deeplabv3plus": (OC, "deeplabv3plus", 0.99, 0.27, {OUTPUT}),
    # the local mixers' window masks (constants of h*w x h*w, 0.37 of the weights) do not
    # shrink; every weight prunes but the CTC classes
    # PagFM's sum over channels of f_x(x) * f_y(y) couples the two convs; PAPPM's grouped
    # conv over the concatenated scales
    "pidnet": (B, "pidnet", 0.99, 0.27, {OUTPUT}),
    # CatBottleneck's cascade of halving widths concatenated, ARM / FFM attention
    "stdc": (B, "stdc", 0.99, 0.27, {OUTPUT}),
    # the prototypes contract against the mask coefficients the head's reshape merged with
    # the priors (split again on the 1x1 level): those k channels stay with the predictors'
    "yolact": (DN, "yolact", 0.99, 0.29, {"Reshape '/prediction", OUTPUT}),
    # the dynamic 1x1 conv: the kernel branch's E outputs (every grid cell's kernel) and the
    # mask features' E channels are one prunable group; the grid rows stay
    "solov2": (DN, "solov2", 0.99, 0.27, {"/conv_kernel", OUTPUT}),
    # the controller's outputs split into per-instance weights of grouped dynamic convs (the
    # controller's rows and the mask branch's E outputs, merged with the instances, stay)
    "condinst": (
        DN,
        "condinst",
        0.99,
        0.44,
        {"Reshape '/Reshape", "'/Conv_2'", "'/controller/Conv'", "a single channel", OUTPUT},
    ),
    # ASF: the mean over the fused channels, one attention weight per stage (single channels)
    "dbnetpp": (DN, "dbnetpp", 0.99, 0.27, {"a single channel", OUTPUT}),
    "fastscnn": (DN, "fastscnn", 0.99, 0.31, {OUTPUT}),
    "upernet": (DN, "upernet", 0.99, 0.27, {OUTPUT}),
    "svtr": (OC, "svtr", 0.62, 0.56, {"Softmax '/Softmax'", OUTPUT}),
}
# all eighteen: 65 s of CPU (-m corpus; 2.5 min wall on this shared machine); -m 'corpus and
# not slow' (33 s) leaves out ENet (a 20 s dynamo export), YOLOv9, U^2-Net, PIDNet and DDRNet
SLOW = {"enet", "yolov9", "u2net", "pidnet", "ddrnet"}


corpus = pytest.mark.corpus
BATTERY = battery(MODELS, by_module(MODELS), slow=SLOW, marks=[corpus])
case, analysis = BATTERY.case, BATTERY.analysis
globals().update(BATTERY.tests)  # collected as this module's tests


@corpus
def test_yolact_prototypes_lock_with_the_mask_coefficients():
    """``proto @ coeffs.T`` contracts the prototypes' k channels against the coefficients'
    k, which the head's ``view(N, -1, k)`` merged with the priors: the last proto conv's
    outputs are one locked group with them (pruned alone, the compact MatMul would not fit),
    and the proto convs before it prune."""
    groups = [g for g in analysis("yolact").groups if any("proto_out" in m.node for m in g.members)]
    (last,) = [
        g
        for g in groups
        if any(m.node.endswith("proto_out.2/Conv") and m.role == "producer" for m in g.members)
    ]
    assert not last.prunable and last.size == 8 and "Reshape '/prediction" in last.reason
    assert all(g.prunable for g in groups if g is not last)


@corpus
def test_solov2_dynamic_kernels_prune_with_the_mask_features():
    """``conv2d(mask_feats, kernel_preds.view(-1, E, 1, 1))``: the weight of that conv is an
    activation whose axis 1 is the E outputs of every level's ``conv_kernel``; they and the
    mask feature head's E channels (in GroupNorm's groups) are one prunable group (the
    dead-channel check zeroes the killed input channels of such a conv, as it does for a
    MatMul of two activations)."""
    groups = [g for g in analysis("solov2").groups if any("conv_pred" in m.node for m in g.members)]
    (dynamic,) = [
        g for g in groups if sum(m.node.startswith("/conv_kernel") for m in g.members) >= 3
    ]
    assert dynamic.prunable and dynamic.size == 4  # conv_pred's GroupNorm: 4 groups of 2
