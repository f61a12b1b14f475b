"""The later block kinds of ``random_ops`` (reductions, norms, gates, merges, shared and
computed weights, attention), as a mixin of its generator: each maps the NCHW main tensor
to a new one with the generator's helpers (``s``, ``coin``, ``pick``, ``const``, ...)."""

from __future__ import annotations

import numpy as np
import onnx


class MoreBlocks:
    """Block methods mixed into ``random_ops._Gen`` (they use its helpers and builder)."""

    def reduce(self, x: str) -> str:
        n, c, h, w = self.s(x)
        op = self.pick(("ReduceMean", "ReduceSum"))
        over = self.pick(("channel", "space"))
        keep = self.coin()
        axes = (1,) if over == "channel" else (2, 3)
        kept = tuple(1 if a in axes else d for a, d in enumerate((n, c, h, w)))
        shape = kept if keep else tuple(d for a, d in enumerate((n, c, h, w)) if a not in axes)
        r = self.axes_op(op, x, axes, shape, keepdims=int(keep))
        if not keep:
            r = self.axes_op("Unsqueeze", r, axes, kept)
        if op == "ReduceSum":
            r = self.b.binary("Div", r, self.b.const(self.b._name("Den", None), np.float32(c)))
        return self.b.binary(self.pick(("Mul", "Sub", "Add")), x, r)

    def softmax(self, x: str) -> str:
        if self.s(x)[1] < 2:
            return self.conv(x)
        return self.b.unary("Softmax", x, axis=self.pick((1, -3)))

    def layernorm(self, x: str) -> str:
        if self.b.opset < 17:  # no LayerNormalization op: exporters write it out
            return self.plainnorm(x)
        c = self.s(x)[1]
        y = self.to_nhwc(x)
        node = self.b._name("LayerNormalization", None)
        scale = self.b.const(f"{node}.weight", (1 + 0.1 * self.rng.standard_normal(c)).astype("f"))
        ins = [y, scale]
        if self.coin():
            ins.append(self.b.const(f"{node}.bias", 0.1 * self.rng.standard_normal(c).astype("f")))
        y = self.b.op("LayerNormalization", ins, self.s(y), name=node, axis=-1, epsilon=1e-5)
        return self.to_nchw(y)

    def gate(self, x: str) -> str:
        c = self.s(x)[1]
        form = self.pick(("sigmoid", "hardswish", "spatial", "hardsigmoid"))
        if form == "hardswish" and self.b.opset >= 14:
            return self.b.unary("HardSwish", x)
        if form == "spatial":
            return self.b.mul(x, self.b.sigmoid(self.conv(x, out=1, stride=1)))
        g = self.conv(x, out=c, stride=1)
        gate = self.b.sigmoid(g) if form == "sigmoid" else self.b.unary("HardSigmoid", g)
        return self.b.mul(x, gate) if self.coin() else self.b.mul(gate, x)

    def minmax(self, x: str) -> str:
        n, c, h, w = self.s(x)
        y = self.partner(x, same_channels=True)
        form = self.pick(("Max", "Min", "where", "wherec"))
        if form in ("Max", "Min"):
            return self.b.binary(form, x, y)
        if form == "where":
            cond = self.b.op("Greater", [x, y], (n, c, h, w))
        else:
            mask = self.rng.random((1, c, 1, 1)) < 0.5
            cond = self.b.const(self.b._name("Cond", None), mask)
        return self.b.op("Where", [cond, x, y], (n, c, h, w))

    def expand(self, x: str) -> str:
        n, c, h, w = self.s(x)
        k = self.const((1, c, 1, 1))
        e = self.b.op("Expand", [k, self.ints((n, c, h, w))], (n, c, h, w))
        return self.b.add(x, e) if self.coin() else self.b.mul(e, x)

    def tile(self, x: str) -> str:
        n, c, h, w = self.s(x)
        if c <= 8 and self.coin():
            return self.b.op("Tile", [x, self.ints((1, 2, 1, 1))], (n, 2 * c, h, w))
        if h <= 8:
            y = self.b.op("Tile", [x, self.ints((1, 1, 2, 2))], (n, c, 2 * h, 2 * w))
            return self.b.maxpool(y, 2, 2, pad=0)
        return self.b.relu(x)

    def squeeze(self, x: str) -> str:
        n, c, h, w = self.s(x)
        at = self.pick((0, 2))
        shape = (1, n, c, h, w) if at == 0 else (n, c, 1, h, w)
        y = self.axes_op("Unsqueeze", x, (at,), shape)
        if at == 2 and self.coin():
            y = self.b.relu(y)
        return self.axes_op("Squeeze", y, (at,), (n, c, h, w))

    def residual(self, x: str) -> str:
        """x + an earlier tensor of its shape (or a conv of x), then maybe a ReLU."""
        y = self.b.add(x, self.partner(x, same_channels=True))
        return self.b.relu(y) if self.coin() else y

    def shared(self, x: str) -> str:
        """One conv weight applied twice (a layer called twice), in a chain or on two
        branches that merge."""
        n, c, h, w = self.s(x)
        node = self.b._name("Shared", None)
        weight = self.b._weight(f"{node}.weight", (c, c, 1, 1), c)
        if self.coin():
            weight = self.b.op("Identity", [weight], (c, c, 1, 1))
        y = self.b.op("Conv", [x, weight], (n, c, h, w), kernel_shape=[1, 1])
        other = self.b.relu(y) if self.coin() else self.partner(x, same_channels=True)
        z = self.b.op("Conv", [other, weight], (n, c, h, w), kernel_shape=[1, 1])
        return self.b.add(y, z) if self.coin() else z

    def dynreshape(self, x: str) -> str:
        """Flatten the spatial axes and back with shapes computed by Shape/Gather/Concat
        (or 0 and -1 in constant targets), as exporters write ``x.view(n, c, -1)``."""
        n, c, h, w = self.s(x)
        if self.coin():
            flat = self.b.reshape(x, (0, 0, -1))
            y = self.b.unary("Softmax", flat, axis=-1) if self.coin() else self.b.relu(flat)
            return self.b.reshape(y, (0, -1, h, w) if self.coin() else (n, c, h, w))
        shape = self.b.op("Shape", [x], (4,))
        nc = self.b.op("Gather", [shape, self.ints((0, 1))], (2,), axis=0)
        hw = self.b.op("Gather", [shape, self.ints((2, 3))], (2,), axis=0)
        target = self.b.op("Concat", [nc, self.ints((-1,))], (3,), axis=0)
        flat = self.b.op("Reshape", [x, target], (n, c, h * w))
        flat = self.b.unary("Sigmoid", flat)
        back = self.b.op("Concat", [nc, hw], (4,), axis=0)
        return self.b.op("Reshape", [flat, back], (n, c, h, w))

    def conv1d(self, x: str) -> str:
        """A Conv1d over the flattened spatial axes: Reshape (n, c, h*w), Conv, back."""
        n, c, h, w = self.s(x)
        y = self.b.reshape(x, (n, c, h * w))
        out, k = self.chans(), self.pick((1, 3))
        node = self.b._name("Conv1d", None)
        weight = self.b._weight(f"{node}.weight", (out, c, k), c * k)
        ins = [y, weight] + ([self.bias(node, out)] if self.coin() else [])
        y = self.b.op("Conv", ins, (n, out, h * w), name=node, kernel_shape=[k], pads=[k // 2] * 2)
        return self.b.reshape(y, (n, out, h, w))

    def maxout(self, x: str) -> str:
        """Channel pairs merged: Reshape (n, c/2, 2, h, w), ReduceMax over the pair."""
        n, c, h, w = self.s(x)
        if c % 2 or c < 4:
            return self.conv(x)
        y = self.b.reshape(x, (n, c // 2, 2, h, w))
        return self.axes_op("ReduceMax", y, (2,), (n, c // 2, h, w), keepdims=0)

    def sum(self, x: str) -> str:
        """Sum / Mean of x and one or two tensors of its shape."""
        parts = [x, self.partner(x, same_channels=True)]
        if self.coin():
            parts.append(self.partner(x, same_channels=True))
        return self.b.op(self.pick(("Sum", "Mean")), parts, self.s(x))

    def groupnorm(self, x: str) -> str:
        """GroupNorm as torch exports it: Reshape (n, g, -1), InstanceNormalization, Reshape
        back, per-channel Mul and Add."""
        n, c, h, w = self.s(x)
        gs = [g for g in (1, 2, 4) if c % g == 0]
        g = self.pick(gs)
        y = self.b.reshape(x, (n, g, -1))
        ones = self.b.const(self.b._name("Ones", None), np.ones(g, np.float32))
        zeros = self.b.const(self.b._name("Zeros", None), np.zeros(g, np.float32))
        y = self.b.op("InstanceNormalization", [y, ones, zeros], self.s(y), epsilon=1e-5)
        y = self.b.reshape(y, (n, c, h, w))
        y = self.b.mul(y, self.const((c, 1, 1)))
        return self.b.add(y, self.const((c, 1, 1)))

    def plainnorm(self, x: str) -> str:
        """A LayerNorm written out in plain ops, over the channels of NCHW (ConvNeXt's
        channels_first) or the last axis of an NHWC view."""
        _n, c, _h, _w = self.s(x)
        last = self.coin()
        y = self.to_nhwc(x) if last else x
        axis = 3 if last else 1
        shape = self.s(y)
        red = tuple(1 if a == axis else d for a, d in enumerate(shape))
        mean = self.axes_op("ReduceMean", y, (axis,), red, keepdims=1)
        d = self.b.binary("Sub", y, mean)
        two = self.b.const(self.b._name("Two", None), np.array(2.0, np.float32))
        var = self.axes_op("ReduceMean", self.b.binary("Pow", d, two), (axis,), red, keepdims=1)
        eps = self.b.const(self.b._name("Eps", None), np.array(1e-5, np.float32))
        y = self.b.binary("Div", d, self.b.unary("Sqrt", self.b.add(var, eps)))
        param = (c,) if last else (c, 1, 1)
        y = self.b.add(self.b.mul(y, self.const(param)), self.const(param))
        return self.to_nchw(y) if last else y

    def nhwccat(self, x: str) -> str:
        """Concat or Split on the channel axis of NHWC views (axis 3 or -1)."""
        _n, c, _h, _w = self.s(x)
        a = self.to_nhwc(x)
        axis = self.pick((3, -1))
        if self.coin() or c < 2:
            other = self.to_nhwc(self.partner(x, same_channels=False))
            return self.to_nchw(self.b.concat([a, other], axis=axis))
        cut = int(self.rng.integers(1, c))
        parts = self.b.split(a, [cut, c - cut], axis=axis)
        return self.to_nchw(self.b.relu(self.pick(parts)))

    def cast(self, x: str) -> str:
        """A round trip through float16 (Cast, Cast)."""
        y = self.b.op("Cast", [x], self.s(x), to=onnx.TensorProto.FLOAT16)
        return self.b.op("Cast", [y], self.s(x), to=onnx.TensorProto.FLOAT)

    def leftmatmul(self, x: str) -> str:
        """MatMul(W, x) with the constant on the left over (n, c, h*w), or Gemm with transA
        and alpha over (c, h*w)."""
        n, c, h, w = self.s(x)
        out = self.chans()
        y = self.b.reshape(x, (n, c, h * w))
        if n == 1 and self.coin():
            y = self.b.reshape(y, (c, h * w))
            z = self.b.op("Gemm", [y, self.const((c, out))], (h * w, out), transA=1, alpha=0.5)
            return self.to_nchw(self.b.reshape(z, (n, h, w, out)))
        weight = self.b._weight(self.b._name("LeftW", None), (out, c), c)
        z = self.b.op("MatMul", [weight, y], (n, out, h * w))
        return self.b.reshape(z, (n, out, h, w))

    def tfweight(self, x: str) -> str:
        """A conv whose weight is Transpose(HWIO constant) and whose bias is an Add of a
        Reshape (c,) -> (1, c, 1, 1), as TF converters write them."""
        n, c, h, w = self.s(x)
        out, k = self.chans(), self.pick((1, 3))
        hwio = self.b._weight(self.b._name("Hwio", None), (k, k, c, out), c * k * k)
        weight = self.b.op("Transpose", [hwio], (out, c, k, k), perm=[3, 2, 0, 1])
        y = self.b.op("Conv", [x, weight], (n, out, h, w), kernel_shape=[k, k], pads=[k // 2] * 4)
        bias = self.b.reshape(self.const((out,)), (1, out, 1, 1))
        return self.b.add(y, bias)

    def selfmerge(self, x: str) -> str:
        """A tensor merged with itself: x + x, x * x, Concat(x, x), an equal Split."""
        c = self.s(x)[1]
        form = self.pick(("add", "mul", "cat", "equal"))
        if form == "add":
            return self.b.add(x, x)
        if form == "mul":
            return self.b.mul(x, self.b.sigmoid(x))
        if form == "cat" or c % 2:
            return self.b.concat([x, x], axis=self.pick((1, -3)))
        n, _, h, w = self.s(x)
        attrs = {"num_outputs": 2} if self.b.opset >= 18 else {}
        parts = self.b.op(
            "Split", [x], None, n_out=2, out_shapes=[(n, c // 2, h, w)] * 2, axis=1, **attrs
        )
        return self.b.binary("Sub", parts[0], parts[1])

    def pick_(self, x: str) -> str:
        """One channel by a scalar Gather index (rank drops), Unsqueeze back, broadcast."""
        n, c, h, w = self.s(x)
        idx = self.b.const(self.b._name("Idx", None), np.array(int(self.rng.integers(-c, c))))
        one = self.b.op("Gather", [x, idx], (n, h, w), axis=1)
        one = self.axes_op("Unsqueeze", one, (1,), (n, 1, h, w))
        return self.b.mul(x, self.b.sigmoid(one))

    def nhwcsoftmax(self, x: str) -> str:
        """Softmax over the last axis of an NHWC view (the channels)."""
        if self.s(x)[1] < 2:
            return self.conv(x)
        return self.to_nchw(self.b.unary("Softmax", self.to_nhwc(x), axis=-1))

    def samepad(self, x: str) -> str:
        """A conv with auto_pad SAME_UPPER (stride 2) or asymmetric explicit pads (which take
        a row off: below two rows the 3x3 kernel would not fit, so a plain conv instead)."""
        n, c, h, w = self.s(x)
        if h < 2:
            return self.conv(x)
        out = self.chans()
        weight = self.b._weight(self.b._name("Same", None), (out, c, 3, 3), 9 * c)
        if h >= 4 and self.coin():
            shape = (n, out, (h + 1) // 2, (w + 1) // 2)
            return self.b.op(
                "Conv",
                [x, weight],
                shape,
                kernel_shape=[3, 3],
                strides=[2, 2],
                auto_pad="SAME_UPPER",
            )
        return self.b.op(
            "Conv", [x, weight], (n, out, h - 1, w), kernel_shape=[3, 3], pads=[0, 1, 1, 1]
        )

    def coordcat(self, x: str) -> str:
        """Concat of x with constant channels (CoordConv), before or after it."""
        n, _c, h, w = self.s(x)
        k = int(self.rng.integers(1, 3))
        coords = self.const((n, k, h, w))
        parts = [x, coords] if self.coin() else [coords, x]
        return self.b.concat(parts, axis=self.pick((1, -3)))

    def posembed(self, x: str) -> str:
        """A full-shape constant added (a positional embedding) or a spatial (1, 1, h, w) mask
        multiplied, in NCHW or on an NHWC view."""
        _n, c, h, w = self.s(x)
        if self.coin():
            return self.b.mul(x, self.const((1, 1, h, w)))
        if self.coin():
            return self.b.add(x, self.const((1, c, h, w)))
        return self.to_nchw(self.b.add(self.to_nhwc(x), self.const((h, w, c))))

    def tokens(self, x: str) -> str:
        """(n, c, h, w) -> (n, h*w, c)."""
        n, c, h, w = self.s(x)
        return self.b.transpose(self.b.reshape(x, (n, c, h * w)), (0, 2, 1))

    def untokens(self, t: str, h: int, w: int) -> str:
        n, _, c = self.s(t)
        return self.b.reshape(self.b.transpose(t, (0, 2, 1)), (n, c, h, w))

    def dense(self, t: str, out: int) -> str:
        """MatMul with a constant (in, out) weight, maybe an Add of a bias."""
        y = self.b.matmul(t, out)
        return self.b.add(y, self.const((out,))) if self.coin() else y

    def attention(self, x: str) -> str:
        """Multi-head self-attention over the h*w tokens: Q, K, V projections split into
        heads by Reshape/Transpose, softmax(Q K^T * s) V, heads merged, output projection,
        residual add."""
        n, c, h, w = self.s(x)
        heads, d = self.pick((1, 2, 3)), self.pick((2, 4))
        t = self.tokens(x)
        hw = h * w
        q, k, v = (self.dense(t, heads * d) for _ in range(3))
        q = self.b.transpose(self.b.reshape(q, (n, hw, heads, d)), (0, 2, 1, 3))
        k = self.b.transpose(self.b.reshape(k, (n, hw, heads, d)), (0, 2, 3, 1))
        v = self.b.transpose(self.b.reshape(v, (n, hw, heads, d)), (0, 2, 1, 3))
        att = self.b.op("MatMul", [q, k], (n, heads, hw, hw))
        scale = self.b.const(self.b._name("Scale", None), np.array(d**-0.5, np.float32))
        att = self.b.unary("Softmax", self.b.mul(att, scale), axis=-1)
        o = self.b.op("MatMul", [att, v], (n, heads, hw, d))
        o = self.b.reshape(self.b.transpose(o, (0, 2, 1, 3)), (n, hw, heads * d))
        o = self.dense(o, c)
        return self.untokens(self.b.add(t, o) if self.coin(0.7) else o, h, w)

    def mlp(self, x: str) -> str:
        """A transformer MLP over tokens: MatMul, GELU (Erf form), MatMul, residual add."""
        _n, c, h, w = self.s(x)
        t = self.tokens(x)
        y = self.dense(t, self.chans(2, 24))
        if self.coin():
            k = self.b.const(self.b._name("Rsqrt2", None), np.array(2**-0.5, np.float32))
            erf = self.b.unary("Erf", self.b.mul(y, k))
            one = self.b.const(self.b._name("One", None), np.array(1.0, np.float32))
            half = self.b.const(self.b._name("Half", None), np.array(0.5, np.float32))
            y = self.b.mul(self.b.mul(y, self.b.add(erf, one)), half)
        else:
            y = self.b.relu(y)
        y = self.dense(y, c)
        return self.untokens(self.b.add(t, y) if self.coin(0.7) else y, h, w)
