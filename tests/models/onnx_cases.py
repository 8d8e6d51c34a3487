"""The table of small ONNX graphs the import tests run, one per op and attribute variant (each a function of a
`Graph` returning its output name, with the input shape it takes), and seeded random graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx_graphs import Case, Graph


def _mlp_gemm(
    g: Graph, trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0, c_shape: tuple[int, ...] = (5,)
) -> str:
    w = g.weight(5, 6) if trans_b else g.weight(6, 5)
    inputs = ["x", w] + ([g.weight(*c_shape)] if c_shape != () or g.opset >= 11 else [])
    if c_shape == () and g.opset < 11:
        inputs.append(g.weight(5))
    h = g.op("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta)
    return g.op("Relu", [h])


def gemm_trans_b(g: Graph) -> str:
    return _mlp_gemm(g)


def gemm_no_trans(g: Graph) -> str:
    return _mlp_gemm(g, trans_b=0)


def gemm_alpha_beta(g: Graph) -> str:
    return _mlp_gemm(g, alpha=0.5, beta=2.0, c_shape=(1, 5))


def gemm_scalar_c(g: Graph) -> str:
    return _mlp_gemm(g, c_shape=(1,))


def gemm_two_layers(g: Graph) -> str:
    h = g.op("Gemm", ["x", g.weight(7, 6, name="fc1.weight"), g.weight(7, name="fc1.bias")], transB=1)
    h = g.op("Tanh", [h])
    return g.op("Gemm", [h, g.weight(4, 7, name="fc2.weight"), g.weight(4, name="fc2.bias")], transB=1)


def matmul_add(g: Graph) -> str:
    h = g.op("MatMul", ["x", g.weight(6, 5)])
    h = g.op("Add", [h, g.weight(5)])
    return g.op("Sigmoid", [h])


def matmul_no_bias(g: Graph) -> str:
    return g.op("MatMul", ["x", g.weight(6, 3)])


def matmul_left_column(g: Graph) -> str:  # input (1, 6, 1): W @ x
    h = g.op("MatMul", [g.weight(4, 6), "x"])
    return g.op("Relu", [h])


def matmul_left_matrix(g: Graph) -> str:  # input (1, 6, 2): W @ x with two columns
    return g.op("MatMul", [g.weight(3, 6), "x"])


def conv_basic(g: Graph) -> str:
    h = g.op("Conv", ["x", g.weight(4, 3, 3, 3), g.weight(4)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.op("Relu", [h])


def conv_strides_dilations(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(4, 3, 3, 3)], strides=[2, 1], dilations=[1, 2], pads=[2, 1, 2, 1])


def conv_asymmetric(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 2, 3), g.weight(2)], pads=[0, 1, 1, 2], strides=[2, 2])


def conv_groups(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(6, 1, 3, 3), g.weight(6)], group=3, pads=[1, 1, 1, 1])


def conv_same_upper(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 2, 2)], auto_pad="SAME_UPPER", strides=[2, 2])


def conv_same_lower(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 4, 4)], auto_pad="SAME_LOWER")


def conv_valid(g: Graph) -> str:
    return g.op("Conv", ["x", g.weight(2, 3, 3, 3)], auto_pad="VALID")


def conv1d(g: Graph) -> str:  # input (1, 3, 8)
    return g.op("Conv", ["x", g.weight(2, 3, 3), g.weight(2)], pads=[1, 2], strides=[2])


def residual(g: Graph) -> str:
    h = g.op("Conv", ["x", g.weight(3, 3, 3, 3), g.weight(3)], pads=[1, 1, 1, 1])
    h = g.op("Relu", [h])
    return g.op("Add", ["x", h])


def normalise_per_channel(g: Graph) -> str:
    mean = g.const(np.asarray([0.4, 0.5, 0.6], dtype=np.float32).reshape(1, 3, 1, 1))
    std = g.const(np.asarray([0.2, 0.25, 0.3], dtype=np.float32).reshape(3, 1, 1))
    h = g.op("Div", [g.op("Sub", ["x", mean]), std])
    return g.op("Relu", [h])


def normalise_scalar(g: Graph) -> str:
    h = g.op("Div", [g.op("Sub", ["x", g.const(np.float32(0.1307))]), g.const(np.asarray([0.3081], np.float32))])
    return g.op("MatMul", [g.op("Flatten", [h]), g.weight(12, 3)])


def constant_affine(g: Graph) -> str:
    h = g.op("Mul", [g.const(np.float32(2.0)), "x"])
    h = g.op("Add", [h, g.weight(1, 3, 1, 1)])
    h = g.op("Sub", [g.const(np.float32(0.5)), h])
    return g.op("Div", [h, g.const(np.asarray([4.0], np.float32))])


def two_tensor_ops(g: Graph) -> str:
    a = g.op("Relu", ["x"])
    b = g.op("Sigmoid", ["x"])
    return g.op("Sub", [g.op("Mul", [a, b]), g.op("Div", [a, g.op("Add", [b, b])])])


def batch_norm(g: Graph) -> str:
    var = g.const(np.asarray([0.5, 1.0, 2.0], np.float32))
    attrs = {"epsilon": 1e-3} if g.opset < 14 else {"epsilon": 1e-3, "training_mode": 0}
    return g.op("BatchNormalization", ["x", g.weight(3), g.weight(3), g.weight(3), var], **attrs)


def batch_norm_1d(g: Graph) -> str:  # input (1, 6)
    var = g.const(np.linspace(0.5, 2.0, 6).astype(np.float32))
    return g.op("BatchNormalization", ["x", g.weight(6), g.weight(6), g.weight(6), var])


def flatten_axis0(g: Graph) -> str:
    return g.op("MatMul", [g.op("Flatten", ["x"], axis=0), g.weight(12, 2)])


def reshape_constant(g: Graph) -> str:
    h = g.op("Reshape", ["x", g.const(np.asarray([1, -1], np.int64))])
    h = g.op("Gemm", [h, g.weight(5, 12), g.weight(5)], transB=1)
    return g.op("Reshape", [h, g.const(np.asarray([0, 5, 1], np.int64))])


def squeeze_unsqueeze(g: Graph) -> str:  # input (1, 6, 1)
    h = g.axes_op("Squeeze", "x", [2])
    h = g.op("Gemm", [h, g.weight(4, 6), g.weight(4)], transB=1)
    h = g.axes_op("Unsqueeze", h, [1, 3] if g.opset < 11 else [1, -1])
    h = g.op("Relu", [h])
    return g.axes_op("Squeeze", h, [1])


def transpose_reshape_only(g: Graph) -> str:  # input (1, 6, 1)
    h = g.op("Transpose", ["x"], perm=[0, 2, 1])
    return g.op("MatMul", [h, g.weight(6, 3)])


def transpose_permute(g: Graph) -> str:
    h = g.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    return g.op("MatMul", [h, g.weight(3, 2)])


def average_pool(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])


def average_pool_pads(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)


def average_pool_include_pad(g: Graph) -> str:
    return g.op("AveragePool", ["x"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], count_include_pad=1, strides=[1, 2])


def average_pool_ceil(g: Graph) -> str:
    attrs = {"ceil_mode": 1} if g.opset >= 10 else {}
    return g.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], **attrs)


def max_pool(g: Graph) -> str:
    return g.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])


def max_pool_pads(g: Graph) -> str:
    return g.op("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])


def max_pool_asymmetric(g: Graph) -> str:
    h = g.op("Sub", [g.const(np.float32(5.0)), "x"])  # all negative... then the pad must never win
    h = g.op("Mul", [h, g.const(np.float32(-1.0))])
    return g.op("MaxPool", [h], kernel_shape=[2, 2], pads=[1, 0, 0, 1])


def max_pool_dilated(g: Graph) -> str:
    attrs = {"dilations": [2, 1]} if g.opset >= 10 else {}
    return g.op("MaxPool", ["x"], kernel_shape=[2, 2], **attrs)


def global_average_pool(g: Graph) -> str:
    return g.op("GlobalAveragePool", [g.op("Relu", ["x"])])


def concat_branches(g: Graph) -> str:
    a = g.op("Conv", ["x", g.weight(2, 3, 1, 1)])
    b = g.op("Conv", ["x", g.weight(3, 3, 3, 3)], pads=[1, 1, 1, 1])
    return g.op("Concat", [a, b], axis=1)


def constant_identity_dropout(g: Graph) -> str:
    c = g.op("Constant", [], value=onnx.numpy_helper.from_array(np.full((1, 5), 0.25, np.float32)))
    h = g.op("Gemm", ["x", g.weight(5, 6), g.weight(5)], transB=1)
    h = g.op("Identity", [g.op("Add", [h, c])])
    return g.op("Dropout", [h], **({"ratio": 0.5} if g.opset < 12 else {}))


def shape_flatten_pattern(g: Graph) -> str:
    """What the TorchScript exporter writes for x.view(x.size(0), -1)."""
    shape = g.op("Shape", ["x"])
    n = g.op("Gather", [shape, g.const(np.asarray(0, np.int64))], axis=0)
    n = g.axes_op("Unsqueeze", n, [0])
    minus = g.op("Constant", [], value=onnx.numpy_helper.from_array(np.asarray([-1], np.int64)))
    target = g.op("Concat", [n, minus], axis=0)
    h = g.op("Reshape", ["x", target])
    return g.op("MatMul", [h, g.weight(12, 4)])


def channels_last_flatten(g: Graph) -> str:
    """What tf2onnx writes: the feature map transposed to (H, W, C), flattened into a dense layer."""
    h = g.op("Relu", [g.op("Conv", ["x", g.weight(4, 3, 3, 3), g.weight(4)], pads=[1, 1, 1, 1])])
    h = g.op("Transpose", [h], perm=[0, 2, 3, 1])
    h = g.op("Reshape", [h, g.const(np.asarray([1, -1], np.int64))])
    h = g.op("Add", [g.op("MatMul", [h, g.weight(64, 5, name="dense/kernel")]), g.weight(5)])
    return g.op("Relu", [h])


def clip_relu6_neg(g: Graph) -> str:
    if g.opset < 11:
        relu, six = g.op("Clip", ["x"], min=0.0), g.op("Clip", ["x"], min=0.0, max=6.0)
    else:
        relu = g.op("Clip", ["x", g.const(np.float32(0.0))])
        six = g.op("Clip", ["x", g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    return g.op("Add", [g.op("Neg", [relu]), g.op("Mul", [six, g.const(np.float32(3.0))])])


IMAGE, FLAT, COLUMN = (1, 3, 4, 4), (1, 6), (1, 6, 1)
CASES: dict[str, tuple[Case, tuple[int, ...]]] = {
    "gemm_trans_b": (gemm_trans_b, FLAT),
    "gemm_no_trans": (gemm_no_trans, FLAT),
    "gemm_alpha_beta": (gemm_alpha_beta, FLAT),
    "gemm_scalar_c": (gemm_scalar_c, FLAT),
    "gemm_two_layers": (gemm_two_layers, FLAT),
    "matmul_add": (matmul_add, FLAT),
    "matmul_no_bias": (matmul_no_bias, FLAT),
    "matmul_left_column": (matmul_left_column, COLUMN),
    "matmul_left_matrix": (matmul_left_matrix, (1, 6, 2)),
    "conv_basic": (conv_basic, IMAGE),
    "conv_strides_dilations": (conv_strides_dilations, (1, 3, 7, 6)),
    "conv_asymmetric": (conv_asymmetric, (1, 3, 5, 6)),
    "conv_groups": (conv_groups, IMAGE),
    "conv_same_upper": (conv_same_upper, (1, 3, 5, 5)),
    "conv_same_lower": (conv_same_lower, (1, 3, 5, 5)),
    "conv_valid": (conv_valid, IMAGE),
    "conv1d": (conv1d, (1, 3, 8)),
    "residual": (residual, IMAGE),
    "normalise_per_channel": (normalise_per_channel, IMAGE),
    "normalise_scalar": (normalise_scalar, (1, 3, 2, 2)),
    "constant_affine": (constant_affine, IMAGE),
    "two_tensor_ops": (two_tensor_ops, IMAGE),
    "batch_norm": (batch_norm, IMAGE),
    "batch_norm_1d": (batch_norm_1d, FLAT),
    "flatten_axis0": (flatten_axis0, (1, 3, 2, 2)),
    "reshape_constant": (reshape_constant, (1, 3, 2, 2)),
    "squeeze_unsqueeze": (squeeze_unsqueeze, COLUMN),
    "transpose_reshape_only": (transpose_reshape_only, COLUMN),
    "transpose_permute": (transpose_permute, IMAGE),
    "average_pool": (average_pool, IMAGE),
    "average_pool_pads": (average_pool_pads, (1, 2, 5, 5)),
    "average_pool_include_pad": (average_pool_include_pad, (1, 2, 5, 5)),
    "average_pool_ceil": (average_pool_ceil, (1, 2, 6, 6)),
    "max_pool": (max_pool, IMAGE),
    "max_pool_pads": (max_pool_pads, (1, 2, 5, 5)),
    "max_pool_asymmetric": (max_pool_asymmetric, (1, 2, 5, 5)),
    "max_pool_dilated": (max_pool_dilated, (1, 2, 5, 5)),
    "global_average_pool": (global_average_pool, IMAGE),
    "concat_branches": (concat_branches, IMAGE),
    "constant_identity_dropout": (constant_identity_dropout, FLAT),
    "shape_flatten_pattern": (shape_flatten_pattern, (1, 3, 2, 2)),
    "channels_last_flatten": (channels_last_flatten, IMAGE),
    "clip_relu6_neg": (clip_relu6_neg, IMAGE),
}


def random_window_op(rng: np.random.Generator) -> tuple[Graph, str, tuple[int, ...]]:
    """A Conv / MaxPool / AveragePool with random kernel, strides, pads or auto_pad, dilations, ceil_mode,
    count_include_pad, groups, on a random 1-D or 2-D input."""
    kind = str(rng.choice(["MaxPool", "AveragePool", "Conv"]))
    n = int(rng.choice([1, 2, 2]))
    spatial = tuple(int(v) for v in rng.integers(3, 9, size=n))
    shape = (1, 2, *spatial)
    g = Graph(shape, int(rng.choice([10, 13, 17, 19, 21])))
    kernel = [int(v) for v in rng.integers(1, 4, size=n)]
    attrs: dict[str, object] = {"kernel_shape": kernel, "strides": [int(v) for v in rng.integers(1, 4, size=n)]}
    auto = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, size=2 * n)]
    else:
        attrs["auto_pad"] = auto
    if kind != "Conv" and rng.random() < 0.5:
        attrs["ceil_mode"] = 1
    if kind == "AveragePool":
        attrs["count_include_pad"] = int(rng.integers(0, 2))
    if kind != "AveragePool" and rng.random() < 0.4:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, size=n)]
    inputs = ["x"]
    if kind == "Conv":
        group = int(rng.choice([1, 2]))
        attrs["group"] = group
        inputs += [g.weight(4, 2 // group, *kernel), g.weight(4)]
    return g, g.op(kind, inputs, **attrs), shape


def random_chain(rng: np.random.Generator) -> tuple[Graph, str, tuple[int, ...]]:
    """A random chain of shape and element-wise ops (and a residual or concat branch), ending in a dense layer:
    reshapes, transposes, (un)squeezes, flattens, constants broadcast from the left or the right."""
    shape = [(1, 6), (1, 6, 1), (1, 2, 3, 4), (1, 1, 1, 5), (1, 3, 4)][int(rng.integers(0, 5))]
    g = Graph(shape, int(rng.choice([9, 11, 13, 17, 21])))
    h, cur = "x", list(shape)
    for _ in range(int(rng.integers(2, 7))):
        op = str(rng.choice(["relu", "const", "transpose", "reshape", "flatten", "unsqueeze", "squeeze", "branch"]))
        rank = len(cur)
        if op == "relu":
            h = g.op(str(rng.choice(["Relu", "Sigmoid", "Tanh"])), [h])
        elif op == "const":
            # a constant of the trailing dims (some set to 1), broadcast against the value
            k = int(rng.integers(0, rank))
            cshape = [d if rng.random() < 0.6 else 1 for d in cur[rank - k :]]
            c = g.const((rng.normal(size=cshape) + 2.0).astype(np.float32))
            kind = str(rng.choice(["Add", "Sub", "Mul", "Div"]))
            h = g.op(kind, [h, c] if kind == "Div" or rng.random() < 0.5 else [c, h])
        elif op == "transpose" and rank > 2:
            perm = [0, *(int(p) + 1 for p in rng.permutation(rank - 1))]
            h, cur = g.op("Transpose", [h], perm=perm), [cur[p] for p in perm]
        elif op == "reshape":
            n = int(np.prod(cur[1:]))
            split = [d for d in (2, 3) if n % d == 0]
            target = [1, n] if not split or rng.random() < 0.3 else [1, split[0], n // split[0]]
            spec = [0 if rng.random() < 0.3 else 1] + [-1 if i == 0 else t for i, t in enumerate(target[1:])]
            h, cur = g.op("Reshape", [h, g.const(np.asarray(spec, np.int64))]), target
        elif op == "flatten":
            h, cur = g.op("Flatten", [h], axis=1), [1, int(np.prod(cur[1:]))]
        elif op == "unsqueeze":
            axis = int(rng.integers(1, rank + 1))
            h, cur = g.axes_op("Unsqueeze", h, [axis]), [*cur[:axis], 1, *cur[axis:]]
        elif op == "squeeze":
            ones = [i for i in range(1, rank) if cur[i] == 1]
            if ones:
                h, cur = g.axes_op("Squeeze", h, [ones[0]]), [d for i, d in enumerate(cur) if i != ones[0]]
        elif op == "branch":
            other = g.op("Relu", [h])
            if rng.random() < 0.5:
                h = g.op(str(rng.choice(["Add", "Sub", "Mul"])), [h, other])
            else:
                axis = int(rng.integers(1, rank))
                h = g.op("Concat", [h, other], axis=axis)
                cur = [d * 2 if i == axis else d for i, d in enumerate(cur)]
    if len(cur) != 2:
        h, cur = g.op("Flatten", [h], axis=1), [1, int(np.prod(cur[1:]))]
    h = g.op("Gemm", [h, g.weight(3, cur[1]), g.weight(3)], transB=1)
    return g, h, shape
