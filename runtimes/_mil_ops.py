"""Numpy kernels for the MIL operations of converted FFNet programs, following the MIL op specification.

Each kernel takes an :class:`OpContext` and returns one array (or a tuple for multi-output ops). The interpreter
casts results to the dtypes the program declares; kernels accumulate in float32 (float64 where cheap) and never
round on their own. Semantics follow the op definitions documented in coremltools
(``coremltools.converters.mil.mil.ops.defs``), written independently here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ffnet_deploy.errors import RuntimeBackendError

_MISSING = object()


@dataclass
class OpContext:
    """What a kernel sees: the op's resolved inputs, the declared output dtypes and its attributes."""

    type: str
    name: str
    inputs: dict[str, list[Any]]  # input name -> resolved values (tuples such as concat's ``values`` have several)
    output_dtypes: list[np.dtype | None]
    attributes: dict[str, Any]

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The single value bound to input ``key``; ``default`` when the optional input is absent.

        The iOS16 ``constexpr_*`` ops store their parameters as attributes rather than inputs; both are looked up.
        """
        if key in self.inputs:
            return self.inputs[key][0]
        if key in self.attributes:
            return self.attributes[key]
        if default is _MISSING:
            raise RuntimeBackendError(f"coreml-reference | op {self.type!r} ({self.name}) lacks input {key!r}")
        return default

    def scalar(self, key: str, default: Any = _MISSING) -> Any:
        """A scalar input as a Python value (str, bool, int or float)."""
        value = self.get(key, default)
        if isinstance(value, np.ndarray | np.generic):
            return value.item() if value.size == 1 else value
        return value

    def ints(self, key: str, default: Any = _MISSING) -> list[int]:
        value = self.get(key, default)
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def values(self, key: str) -> list[Any]:
        return list(self.inputs.get(key, []))

    @property
    def out_dtype(self) -> np.dtype | None:
        return self.output_dtypes[0] if self.output_dtypes else None


Kernel = Callable[[OpContext], Any]
KERNELS: dict[str, Kernel] = {}


def _register(table: dict[str, Any], names: tuple[str, ...]) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        for name in names:
            table[name] = fn
        return fn

    return deco


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    return _register(KERNELS, names)


def _f32(x: np.ndarray) -> np.ndarray:
    """Float inputs as float32 for accumulation (float64 stays float64)."""
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if x.dtype != np.float64 else x


def unpack_bits(raw: bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    """Unpack ``count`` ``bits``-wide integers packed LSB-first into bytes (the MIL sub-byte layout)."""
    flat = np.unpackbits(np.frombuffer(bytes(raw), np.uint8), bitorder="little")[: count * bits]
    if flat.size < count * bits:
        raise RuntimeBackendError(f"coreml-reference | packed data holds {flat.size // bits} values, {count} needed")
    weights = (1 << np.arange(bits, dtype=np.int32))
    values = flat.reshape(count, bits).astype(np.int32) @ weights
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.astype(np.int8 if signed else np.uint8)


# -- constants --------------------------------------------------------------------------------------------------


@kernel("const")
def _const(ctx: OpContext) -> Any:
    return ctx.attributes["val"]


@kernel("constexpr_cast")
def _constexpr_cast(ctx: OpContext) -> np.ndarray:
    return np.asarray(ctx.get("source_val"))


def _along_axis(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Broadcast a scalar or per-axis vector quantization parameter against a tensor of ``rank``."""
    param = np.asarray(param)
    if param.ndim == 0 or param.ndim == rank:
        return param
    if axis is None:
        raise RuntimeBackendError("coreml-reference | a vector scale/zero_point needs an axis")
    shape = [1] * rank
    shape[axis % rank] = param.size
    return param.reshape(shape)


@kernel("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(ctx: OpContext) -> np.ndarray:
    data = np.asarray(ctx.get("quantized_data"))
    axis = int(ctx.scalar("axis"))
    scale = _along_axis(ctx.get("scale"), data.ndim, axis).astype(np.float32)
    zero = _along_axis(ctx.get("zero_point"), data.ndim, axis).astype(np.float32)
    return (data.astype(np.float32) - zero) * scale


def _block_expand(param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat each entry of a blockwise parameter over its block: block_size[i] = shape[i] / param.shape[i]."""
    for axis, (full, blocks) in enumerate(zip(shape, param.shape, strict=True)):
        if full % blocks:
            raise RuntimeBackendError(f"coreml-reference | dimension {full} is not a multiple of {blocks} blocks")
        if full != blocks:
            param = np.repeat(param, full // blocks, axis=axis)
    return param


@kernel("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(ctx: OpContext) -> np.ndarray:
    data = np.asarray(ctx.get("data"))
    scale = _block_expand(np.asarray(ctx.get("scale"), np.float32), data.shape)
    out = data.astype(np.float32)
    offset = ctx.get("offset", None)
    if offset is not None:
        out = out - _block_expand(np.asarray(offset, np.float32), data.shape)
    return out * scale


@kernel("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(ctx: OpContext) -> np.ndarray:
    lut = np.asarray(ctx.get("lut"))
    indices = np.asarray(ctx.get("indices"))
    if "shape" in ctx.inputs or "shape" in ctx.attributes:
        # iOS16 form: a single scalar LUT and indices packed into uint8 bytes.
        shape = tuple(ctx.ints("shape"))
        count = int(np.prod(shape, dtype=np.int64))
        bits = int(round(math.log2(lut.shape[-1])))
        unpacked = unpack_bits(indices.astype(np.uint8).tobytes(), bits, count, signed=False)
        return lut[unpacked.astype(np.int64)].reshape(shape)
    # iOS18 form: per-block LUTs of shape [blocks..., palettes, vector] and unpacked indices.
    k = indices.ndim
    if lut.ndim != k + 2:
        raise RuntimeBackendError(f"coreml-reference | lut rank {lut.ndim} does not fit indices rank {k}")
    block_sizes = [d // b for d, b in zip(indices.shape, lut.shape[:k], strict=True)]
    block = np.zeros(indices.shape, np.int64)
    for axis in range(k):
        coord = np.arange(indices.shape[axis]) // block_sizes[axis]
        shape = [1] * k
        shape[axis] = -1
        block = block * lut.shape[axis] + coord.reshape(shape)
    palettes, vector = lut.shape[-2], lut.shape[-1]
    flat_lut = lut.reshape(-1, palettes, vector)
    gathered = flat_lut[block, indices.astype(np.int64)]  # indices.shape + (vector,)
    if vector == 1:
        return gathered[..., 0]
    axis = int(ctx.scalar("vector_axis")) % k
    moved = np.moveaxis(gathered, -1, axis + 1)  # [..., d_axis, vector, ...]
    out_shape = list(indices.shape)
    out_shape[axis] *= vector
    return moved.reshape(out_shape)


@kernel("quantize")
def _quantize(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("input"))
    axis = ctx.scalar("axis", None)
    scale = _along_axis(ctx.get("scale"), x.ndim, axis).astype(np.float32)
    zero = ctx.get("zero_point", None)
    q = np.round(x / scale)
    if zero is not None:
        q = q + _along_axis(zero, x.ndim, axis).astype(np.float32)
    dtype = np.dtype({"int8": np.int8, "uint8": np.uint8}.get(ctx.scalar("output_dtype"), ctx.out_dtype))
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


@kernel("dequantize")
def _dequantize(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("input")).astype(np.float32)
    axis = ctx.scalar("axis", None)
    zero = ctx.get("zero_point", None)
    if zero is not None:
        x = x - _along_axis(zero, x.ndim, axis).astype(np.float32)
    return x * _along_axis(ctx.get("scale"), x.ndim, axis).astype(np.float32)


# -- element-wise -----------------------------------------------------------------------------------------------

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide, "maximum": np.maximum,
    "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
}


def _binary(ctx: OpContext) -> np.ndarray:
    x, y = np.asarray(ctx.get("x")), np.asarray(ctx.get("y"))
    if x.dtype.kind == "f" or y.dtype.kind == "f":
        x, y = _f32(x), _f32(y)
    return _BINARY[ctx.type](x, y)


for _name in _BINARY:
    KERNELS[_name] = _binary


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative argument only, so large |x| neither overflows nor loses precision
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7, about float32's resolution).

    Computed in the input's float precision (float32 for activations); numpy has no erf of its own.
    """
    x = np.asarray(x)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.copysign(1.0 - poly * np.exp(-x * x), x)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "tanh": np.tanh,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "abs": np.abs,
    "square": np.square,
    "erf": erf,
    "relu6": lambda x: np.clip(x, 0, 6),
    "identity": lambda x: x,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "sign": np.sign,
}


def _unary(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("x"))
    return _UNARY[ctx.type](_f32(x) if x.dtype.kind == "f" else x)


for _name in _UNARY:
    KERNELS[_name] = _unary


@kernel("gelu")
def _gelu(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    mode = ctx.scalar("mode", "EXACT")
    if mode == "EXACT":
        y = 0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2.0))))
    elif mode == "TANH_APPROXIMATION":
        y = 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)))
    elif mode == "SIGMOID_APPROXIMATION":
        y = x * _sigmoid(np.float32(1.702) * x)
    else:
        raise RuntimeBackendError(f"coreml-reference | gelu mode {mode!r} is unknown")
    return y.astype(np.float32)


@kernel("leaky_relu")
def _leaky_relu(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    return np.where(x >= 0, x, x * float(ctx.scalar("alpha", 0.01)))


@kernel("clip")
def _clip(ctx: OpContext) -> np.ndarray:
    return np.clip(_f32(ctx.get("x")), float(ctx.scalar("alpha")), float(ctx.scalar("beta")))


@kernel("sigmoid_hard")
def _sigmoid_hard(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    return np.clip(float(ctx.scalar("alpha", 0.2)) * x + float(ctx.scalar("beta", 0.5)), 0.0, 1.0)


@kernel("inverse")
def _inverse(ctx: OpContext) -> np.ndarray:
    return 1.0 / (_f32(ctx.get("x")) + float(ctx.scalar("epsilon", 1e-4)))


@kernel("softmax")
def _softmax(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    axis = int(ctx.scalar("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_CAST = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
         "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


@kernel("cast")
def _cast(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("x"))
    # The declared output dtype wins: under force_fp32 the interpreter has already turned fp16 into fp32 there.
    target = ctx.out_dtype or np.dtype(_CAST[ctx.scalar("dtype")])
    if target.kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)
    return x.astype(target)


# -- linear algebra ---------------------------------------------------------------------------------------------


@kernel("linear")
def _linear(ctx: OpContext) -> np.ndarray:
    x, w = _f32(ctx.get("x")), _f32(ctx.get("weight"))
    y = x @ w.T
    bias = ctx.get("bias", None)
    return y + _f32(bias) if bias is not None else y


@kernel("matmul")
def _matmul(ctx: OpContext) -> np.ndarray:
    x, y = _f32(ctx.get("x")), _f32(ctx.get("y"))
    if bool(ctx.scalar("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(ctx.scalar("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _same_pads(size: int, kernel_size: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _spatial_pads(ctx: OpContext, spatial: tuple[int, ...], kernel_sizes: list[int], strides: list[int],
                  dilations: list[int]) -> list[tuple[int, int]]:
    pad_type = ctx.scalar("pad_type", "valid")
    n = len(spatial)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = ctx.ints("pad", [0] * (2 * n))
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        return [_same_pads(spatial[i], kernel_sizes[i], strides[i], dilations[i], pad_type == "same_lower")
                for i in range(n)]
    raise RuntimeBackendError(f"coreml-reference | pad_type {pad_type!r} is unknown")


def conv2d(x: np.ndarray, w: np.ndarray, strides: list[int], pads: list[tuple[int, int]], dilations: list[int],
           groups: int) -> np.ndarray:
    """2-D convolution (N, C, H, W) x (O, C/groups, kh, kw) in float32.

    1x1 convs are one matmul; depthwise convs (one input channel per group, any channel multiplier) are a sum of
    kh*kw shifted, scaled copies, which beats im2col for the large depthwise kernels FFNet uses; everything else is
    im2col through ``sliding_window_view`` and a tensordot per group.
    """
    (sh, sw), (dh, dw) = strides, dilations
    if any(p for pair in pads for p in pair):
        x = np.pad(x, ((0, 0), (0, 0), *pads))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (wd - dw * (kw - 1) - 1) // sw + 1
    if c != cg * groups or o % groups:
        raise RuntimeBackendError(
            f"coreml-reference | conv weight {w.shape} with groups={groups} does not fit input channels {c}"
        )
    if kh == kw == 1 and groups == 1:
        xs = x[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw].reshape(n, c, ho * wo)
        return np.matmul(w.reshape(o, c), xs).reshape(n, o, ho, wo)
    if cg == 1:
        mult = o // groups
        xr = np.repeat(x, mult, axis=1) if mult > 1 else x
        out = np.zeros((n, o, ho, wo), np.float32)
        tmp = np.empty_like(out)
        for i in range(kh):
            for j in range(kw):
                patch = xr[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
                np.multiply(patch, w[:, 0, i, j][None, :, None, None], out=tmp)
                out += tmp
        return out
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw, ::dh, ::dw]  # N,C,Ho,Wo,kh,kw
    og = o // groups
    parts = []
    for g in range(groups):
        wg = w[g * og : (g + 1) * og]
        xg = windows[:, g * cg : (g + 1) * cg]
        parts.append(np.tensordot(xg, wg, axes=([1, 4, 5], [1, 2, 3])))  # N,Ho,Wo,Og
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).transpose(0, 3, 1, 2))


@kernel("conv")
def _conv(ctx: OpContext) -> np.ndarray:
    x, w = _f32(ctx.get("x")), _f32(ctx.get("weight"))
    if x.ndim != 4:
        raise RuntimeBackendError(f"coreml-reference | conv supports 2-D convolutions only, got input rank {x.ndim}")
    kernel_sizes = list(w.shape[2:])
    strides = ctx.ints("strides", [1, 1])
    dilations = ctx.ints("dilations", [1, 1])
    pads = _spatial_pads(ctx, x.shape[2:], kernel_sizes, strides, dilations)
    y = conv2d(x, w, strides, pads, dilations, int(ctx.scalar("groups", 1)))
    bias = ctx.get("bias", None)
    if bias is not None:
        y += _f32(bias)[None, :, None, None]
    return y


@kernel("batch_norm")
def _batch_norm(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = _f32(ctx.get("mean")).reshape(shape)
    var = _f32(ctx.get("variance")).reshape(shape)
    y = (x - mean) / np.sqrt(var + float(ctx.scalar("epsilon", 1e-5)))
    gamma, beta = ctx.get("gamma", None), ctx.get("beta", None)
    if gamma is not None:
        y = y * _f32(gamma).reshape(shape)
    if beta is not None:
        y = y + _f32(beta).reshape(shape)
    return y


@kernel("layer_norm")
def _layer_norm(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    axes = tuple(ctx.ints("axes")) if ctx.get("axes", None) is not None else tuple(range(x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + float(ctx.scalar("epsilon", 1e-5)))
    gamma, beta = ctx.get("gamma", None), ctx.get("beta", None)
    if gamma is not None:
        y = y * _f32(gamma)
    if beta is not None:
        y = y + _f32(beta)
    return y


# -- pooling and reductions -------------------------------------------------------------------------------------


def _pool(ctx: OpContext, reduce: str) -> np.ndarray:
    x = _f32(ctx.get("x"))
    if x.ndim != 4:
        raise RuntimeBackendError(f"coreml-reference | {ctx.type} supports 2-D pooling only, got rank {x.ndim}")
    kernel_sizes = ctx.ints("kernel_sizes")
    strides = ctx.ints("strides", kernel_sizes)
    pads = _spatial_pads(ctx, x.shape[2:], kernel_sizes, strides, [1, 1])
    if bool(ctx.scalar("ceil_mode", False)):
        # Extra bottom/right padding so that the last, partial window is included; it never counts in averages.
        extra = []
        for i, (size, k, s) in enumerate(zip(x.shape[2:], kernel_sizes, strides, strict=True)):
            padded = size + sum(pads[i])
            out = -(-(padded - k) // s) + 1
            extra.append(max((out - 1) * s + k - padded, 0))
    else:
        extra = [0, 0]
    fill = -np.inf if reduce == "max" else 0.0
    full_pads = [(a, b + e) for (a, b), e in zip(pads, extra, strict=True)]
    xp = np.pad(x, ((0, 0), (0, 0), *full_pads), constant_values=fill)
    windows = sliding_window_view(xp, tuple(kernel_sizes), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    if reduce == "max":
        return windows.max(axis=(-2, -1))
    total = windows.sum(axis=(-2, -1))
    if bool(ctx.scalar("exclude_padding_from_average", False)):
        ones = np.pad(np.ones(x.shape[2:], np.float32), full_pads)
        counts = sliding_window_view(ones, tuple(kernel_sizes))[:: strides[0], :: strides[1]].sum(axis=(-2, -1))
    else:
        # Count the declared padding but never the ceil-mode extension.
        ones = np.pad(np.ones([s + sum(p) for s, p in zip(x.shape[2:], pads, strict=True)], np.float32),
                      [(0, e) for e in extra])
        counts = sliding_window_view(ones, tuple(kernel_sizes))[:: strides[0], :: strides[1]].sum(axis=(-2, -1))
    return total / counts


@kernel("avg_pool")
def _avg_pool(ctx: OpContext) -> np.ndarray:
    return _pool(ctx, "avg")


@kernel("max_pool")
def _max_pool(ctx: OpContext) -> np.ndarray:
    return _pool(ctx, "max")


_REDUCE = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
           "reduce_prod": np.prod}


def _reduce(ctx: OpContext) -> np.ndarray:
    x = _f32(ctx.get("x"))
    axes = tuple(ctx.ints("axes")) if ctx.get("axes", None) is not None else None
    return _REDUCE[ctx.type](x, axis=axes, keepdims=bool(ctx.scalar("keep_dims", False)))


for _name in _REDUCE:
    KERNELS[_name] = _reduce


# -- shapes -----------------------------------------------------------------------------------------------------


@kernel("reshape")
def _reshape(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("x"))
    shape = ctx.ints("shape")
    # A 0 copies the input dimension it is right-aligned with (iOS17 rule; the same as iOS15 when ranks match).
    offset = x.ndim - len(shape)
    resolved = []
    for i, d in enumerate(shape):
        if d == 0:
            j = i + offset
            resolved.append(x.shape[j] if 0 <= j < x.ndim else 1)
        else:
            resolved.append(d)
    return x.reshape(resolved)


@kernel("transpose")
def _transpose(ctx: OpContext) -> np.ndarray:
    return np.transpose(np.asarray(ctx.get("x")), ctx.ints("perm"))


@kernel("squeeze")
def _squeeze(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("x"))
    if ctx.get("axes", None) is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(ctx.ints("axes")))


@kernel("expand_dims")
def _expand_dims(ctx: OpContext) -> np.ndarray:
    x = np.asarray(ctx.get("x"))
    rank = x.ndim + len(ctx.ints("axes"))
    return np.expand_dims(x, tuple(a % rank for a in ctx.ints("axes")))


@kernel("concat")
def _concat(ctx: OpContext) -> np.ndarray:
    values = [np.asarray(v) for v in ctx.values("values")]
    axis = int(ctx.scalar("axis"))
    if bool(ctx.scalar("interleave", False)):
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] = -1
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@kernel("classify")
def _classify(ctx: OpContext) -> tuple[Any, np.ndarray]:
    """The classifier tail coremltools appends: returns the top class label and the probabilities as given."""
    probs = np.asarray(ctx.get("probabilities"))
    classes = np.asarray(ctx.get("classes")).reshape(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    labels = classes[flat.argmax(axis=-1)]
    return (labels[0] if labels.size == 1 else labels), probs


# -- several samples through a batch-1 program ------------------------------------------------------------------
# Converted programs fix the batch at 1. They still compute each sample on its own when n samples are stacked on
# axis 0 and no op mixes that axis, which turns n runs (each paying the per-op numpy overhead, dominant at FFNet's
# small maps) into one. Before an op that reads a stacked value the interpreter asks STACKING[op.type]: the rule
# returns the context to run (a reshape's leading 1 becomes n) or raises NotStackable, and the caller then runs the
# samples one by one. An op without a rule is never stacked. After the op, every output must lead with n.


class NotStackable(Exception):
    """An op of the program would mix the samples stacked on axis 0 (internal: the runner falls back)."""


StackRule = Callable[[OpContext, dict[str, list[bool]], int], OpContext]
STACKING: dict[str, StackRule] = {}


def _stacking(*names: str) -> Callable[[StackRule], StackRule]:
    return _register(STACKING, names)


def _only(stacked: dict[str, list[bool]], key: str) -> None:
    if set(stacked) != {key} or not all(stacked[key]):
        raise NotStackable(f"only {key!r} may be stacked")


def _off_axis0(axes: list[int] | None, rank: int) -> None:
    if axes is None or any(a % rank == 0 for a in axes):
        raise NotStackable("the op works along axis 0")


@_stacking(*_UNARY, *_BINARY, "gelu", "leaky_relu", "clip", "sigmoid_hard", "inverse", "cast")
def _stack_elementwise(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    rank = max(np.ndim(ctx.inputs[k][i]) for k, flags in stacked.items() for i, f in enumerate(flags) if f)
    for key, values in ctx.inputs.items():
        for i, value in enumerate(values):
            on = stacked.get(key, [False] * len(values))[i]
            # broadcasting keeps the samples apart only if the other operand has no axis 0 of its own beyond 1
            if not on and isinstance(value, np.ndarray) and value.ndim >= rank and value.shape[0] != 1:
                raise NotStackable(f"{key!r} has its own leading axis")
    return ctx


@_stacking("conv", "batch_norm", "avg_pool", "max_pool", "linear")
def _stack_x(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    if np.ndim(ctx.get("x")) < 2:
        raise NotStackable("x has no sample axis")
    return ctx


@_stacking("matmul")
def _stack_matmul(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    rank = np.ndim(ctx.get("x"))
    if rank < 2 or (rank == 2 and bool(ctx.scalar("transpose_x", False))):
        raise NotStackable("x's axis 0 is a matrix axis")
    return ctx


@_stacking("quantize", "dequantize")
def _stack_quantize(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "input")
    axis = ctx.scalar("axis", None)
    if axis is not None:
        _off_axis0([int(axis)], np.ndim(ctx.get("input")))
    return ctx


@_stacking(*_REDUCE, "layer_norm", "squeeze")  # with no axes they work on every axis, 0 included
def _stack_axes(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    _off_axis0(ctx.ints("axes") if ctx.get("axes", None) is not None else None, np.ndim(ctx.get("x")))
    return ctx


@_stacking("softmax")
def _stack_softmax(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    _off_axis0([int(ctx.scalar("axis", -1))], np.ndim(ctx.get("x")))
    return ctx


@_stacking("transpose")
def _stack_transpose(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    if ctx.ints("perm")[0] % np.ndim(ctx.get("x")) != 0:
        raise NotStackable("the transpose moves axis 0")
    return ctx


@_stacking("expand_dims")
def _stack_expand_dims(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "x")
    _off_axis0(ctx.ints("axes"), np.ndim(ctx.get("x")) + len(ctx.ints("axes")))
    return ctx


@_stacking("concat")
def _stack_concat(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    _only(stacked, "values")
    _off_axis0([int(ctx.scalar("axis"))], np.ndim(ctx.values("values")[0]))
    return ctx


@_stacking("reshape")
def _stack_reshape(ctx: OpContext, stacked: dict[str, list[bool]], n: int) -> OpContext:
    # Samples are contiguous blocks of a C-order array led by the stacked axis; a target led by that axis keeps them.
    _only(stacked, "x")
    shape = ctx.ints("shape")
    x_rank = np.ndim(ctx.get("x"))
    if shape and shape[0] == 0 and len(shape) == x_rank:  # a leading 0 copies axis 0, the stacked one
        return ctx
    if not shape or shape[0] != 1:
        raise NotStackable("the reshape does not keep axis 0 as the samples")
    inputs = dict(ctx.inputs)
    inputs["shape"] = [np.array([n, *shape[1:]], dtype=np.int64)]
    return OpContext(ctx.type, ctx.name, inputs, ctx.output_dtypes, ctx.attributes)
