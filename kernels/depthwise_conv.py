"""Depthwise 2-D convolution with bias and activation in Triton: forward and backward.

``out = act(conv2d(x, weight, bias, stride, padding, dilation, groups=C))`` for ``x`` (N, C, H, W)
and ``weight`` (C, 1, kh, kw). One set of kernels serves contiguous (NCHW) and channels_last
(NHWC) tensors: every tensor is addressed through its explicit (n, c, h, w) strides, and each
program works on a 2-D tile of (a block of pixels) x (a block of channels) whose last, fastest
axis is the contiguous one (channels in NHWC, pixels in NCHW), so that loads coalesce either way.
Padding is a masked load of zero; kernel taps are unrolled (``tl.static_range``). Half and
bfloat16 inputs accumulate in float32, float64 inputs compute in float64. On CUDA tensors the
forward and the input gradient take their tile sizes from Triton's autotuner (once per shape);
the weight gradient keeps a fixed tile so that its reduction order never changes.

Backward (nothing but ``x``, ``weight`` and ``bias`` is saved; the pre-activation is recomputed):

1. ``_depthwise_conv2d_backward_weight_kernel`` walks the output pixels: it recomputes
   ``z = conv(x) + b`` when there is an activation, forms ``dz = grad_out * act'(z)`` (stored in
   a float32/float64 buffer when the input gradient needs it), and writes per-program partial
   sums of ``dz`` (bias gradient) and of ``dz * x`` per tap (weight gradient) into buffers of
   shape (pixel blocks, C) and (pixel blocks, kh*kw, C). A fixed-order ``sum(0)`` over those
   buffers finishes both gradients: deterministic, no atomics.
2. ``_depthwise_conv2d_backward_input_kernel`` gathers the input gradient over the taps:
   ``grad_x[ih, iw] = sum_ij w[i, j] * dz[oh, ow]`` with ``oh = (ih + ph - i * dh) / sh`` when that
   is an integer inside the output (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilefuse.kernels.layout import conv_output_hw, uses_channels_last

# Activation codes shared by the kernels (a ``tl.constexpr`` each kernel specializes on).
ACTIVATION_CODES: dict[str, int] = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4}

_TILE = 2048  # elements of one (pixels x channels) tile
_MAX_BLOCK_C_CHANNELS_LAST = 64  # NHWC: channels are the contiguous axis, take many
_MAX_BLOCK_C_CONTIGUOUS = 16  # NCHW: pixels are the contiguous axis, few channels per tile
_MIN_BLOCK = 2
_NUM_WARPS = 4

# On CUDA tensors the forward and the input gradient take their tile from Triton's autotuner,
# once per shape: each output element is summed over the taps in the same order whatever the
# tile, so the choice changes the speed, never the bits. The weight gradient keeps the fixed
# rule (``_block_sizes``): its partial sums follow its tile, and its bits must not depend on a
# timing. The interpreter (CPU tensors) launches the kernels with the rule's tile.
_TUNING_KEY = ["P", "C", "H", "W", "KH", "KW", "SH", "SW", "CHANNELS_LAST"]
_TUNED_TILES = (1024, 2048, 4096)  # elements of a (pixels x channels) tile
_TUNED_BLOCK_C = (8, 16, 32, 64)
_TUNED_CONFIGS = [triton.Config({"BLOCK_P": tile // block_c, "BLOCK_C": block_c},
                                num_warps=_NUM_WARPS if tile <= 2048 else 8)
                  for block_c in _TUNED_BLOCK_C for tile in _TUNED_TILES]


def tuned_tiles(configs: list[triton.Config], named_args: dict, **kwargs: object
                ) -> list[triton.Config]:
    """The tiles worth timing for one launch: channel blocks within the layout's cap and no
    wider than the channels, pixel blocks no longer than the pixels; the rule's tile when
    nothing else fits."""
    pixels, channels = named_args["P"], named_args["C"]
    channels_last = bool(kwargs.get("CHANNELS_LAST", named_args.get("CHANNELS_LAST")))
    cap = _MAX_BLOCK_C_CHANNELS_LAST if channels_last else _MAX_BLOCK_C_CONTIGUOUS
    widest_c = min(cap, max(_MIN_BLOCK, triton.next_power_of_2(max(channels, 1))))
    longest_p = max(_MIN_BLOCK, triton.next_power_of_2(max(pixels, 1)))
    kept = [c for c in configs
            if c.kwargs["BLOCK_C"] <= widest_c and c.kwargs["BLOCK_P"] <= longest_p]
    if kept:
        return kept
    block_p, block_c = _block_sizes(pixels, channels, channels_last)
    return [triton.Config({"BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=_NUM_WARPS)]


def _quick_bench(kernel_call: object, quantiles: list[float]) -> list[float]:
    # Short timing runs (milliseconds each): a network's layers are tuned on their first calls.
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _autotuned(kernel: triton.JITFunction) -> triton.runtime.Autotuner:
    return triton.autotune(configs=_TUNED_CONFIGS, key=_TUNING_KEY, do_bench=_quick_bench,
                           prune_configs_by={"early_config_prune": tuned_tiles})(kernel)


# ----------------------------------------------------------------------------------------------
# Tile helpers. A tile is (BLOCK_P pixels, BLOCK_C channels) in NHWC and (BLOCK_C, BLOCK_P) in
# NCHW: the contiguous axis is last. Per-pixel values are kept as broadcastable columns (rows in
# NCHW) and per-channel values the other way, so index arithmetic broadcasts to the tile with no
# per-tap reshaping.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_indices(pid_p, pid_c, P, C, D1, D2, CHANNELS_LAST: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Flat pixels of this program split as (n, a, b) over (N, D1, D2), its channels, the tile mask.
    offs = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    if CHANNELS_LAST:
        offs = offs[:, None]
        c = c[None, :]
    else:
        offs = offs[None, :]
        c = c[:, None]
    b = offs % D2
    rest = offs // D2
    a = rest % D1
    n = rest // D1
    mask = (offs < P) & (c < C)
    return n, a, b, c, mask


@triton.jit
def _tile_zeros(COMPUTE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_C: tl.constexpr):
    if CHANNELS_LAST:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=COMPUTE)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=COMPUTE)
    return acc


@triton.jit
def _depthwise_conv2d_pre_activation(x_ptr, w_ptr, b_ptr, n, oh, ow, c, mask, C, H, W,
                                     sxn, sxc, sxh, sxw,
                                     SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
                                     PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                                     KH: tl.constexpr, KW: tl.constexpr,
                                     HAS_BIAS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                     COMPUTE: tl.constexpr, BLOCK_P: tl.constexpr,
                                     BLOCK_C: tl.constexpr):
    # z = conv(x, w) + b on one tile of output pixels (n, oh, ow) x channels c. Each tap's
    # pointers differ from the top-left tap's by a scalar; padding is a masked load of zero.
    acc = _tile_zeros(COMPUTE, CHANNELS_LAST, BLOCK_P, BLOCK_C)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_tile = x_ptr + (n * sxn + ih0 * sxh + iw0 * sxw + c * sxc)
    c_ok = c < C
    w_row = w_ptr + c
    for i in tl.static_range(KH):
        ih = ih0 + i * DH
        h_ok = mask & ((ih >= 0) & (ih < H))
        for j in tl.static_range(KW):
            iw = iw0 + j * DW
            ok = h_ok & ((iw >= 0) & (iw < W))
            xv = tl.load(x_tile + (i * DH * sxh + j * DW * sxw), mask=ok, other=0.0)
            wv = tl.load(w_row + (i * KW + j) * C, mask=c_ok, other=0.0)
            acc += xv.to(COMPUTE) * wv.to(COMPUTE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(COMPUTE)
    return acc


@triton.jit
def _activation_forward(z, ACT: tl.constexpr):
    # act(z); the where() forms propagate NaN like torch does.
    if ACT == 1:  # relu
        y = tl.where(z < 0.0, 0.0, z)
    elif ACT == 2:  # relu6
        y = tl.where(z < 0.0, 0.0, tl.where(z > 6.0, 6.0, z))
    elif ACT == 3:  # hardswish: z * relu6(z + 3) / 6
        y = z * (tl.minimum(tl.maximum(z + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                            propagate_nan=tl.PropagateNan.ALL) * (1.0 / 6.0))
    elif ACT == 4:  # silu: z * sigmoid(z)
        y = z / (1.0 + tl.exp(-z))
    else:
        y = z
    return y


@triton.jit
def _activation_backward(g, z, ACT: tl.constexpr):
    # g * act'(z) with PyTorch's choices at the kinks.
    if ACT == 1:  # relu
        dz = tl.where(z > 0.0, g, 0.0)
    elif ACT == 2:  # relu6
        dz = tl.where((z > 0.0) & (z < 6.0), g, 0.0)
    elif ACT == 3:  # hardswish
        dz = tl.where(z <= -3.0, 0.0, tl.where(z >= 3.0, g, g * (z * (1.0 / 3.0) + 0.5)))
    elif ACT == 4:  # silu
        s = 1.0 / (1.0 + tl.exp(-z))
        dz = g * (s * (1.0 + z * (1.0 - s)))
    else:
        dz = g
    return dz


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@_autotuned
@triton.jit
def _depthwise_conv2d_forward_kernel(x_ptr, w_ptr, b_ptr, out_ptr, P, C, H, W, OH, OW,
                                     sxn, sxc, sxh, sxw, son, soc, soh, sow,
                                     SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
                                     PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                                     KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr,
                                     HAS_BIAS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                     COMPUTE: tl.constexpr, BLOCK_P: tl.constexpr,
                                     BLOCK_C: tl.constexpr):
    # Grid: (cdiv(N*OH*OW, BLOCK_P), cdiv(C, BLOCK_C)).
    n, oh, ow, c, mask = _tile_indices(tl.program_id(0), tl.program_id(1), P, C, OH, OW,
                                       CHANNELS_LAST, BLOCK_P, BLOCK_C)
    z = _depthwise_conv2d_pre_activation(x_ptr, w_ptr, b_ptr, n, oh, ow, c, mask, C, H, W,
                                         sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW, KH, KW,
                                         HAS_BIAS, CHANNELS_LAST, COMPUTE, BLOCK_P, BLOCK_C)
    y = _activation_forward(z, ACT)
    tl.store(out_ptr + (n * son + oh * soh + ow * sow + c * soc),
             y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _depthwise_conv2d_backward_weight_kernel(g_ptr, x_ptr, w_ptr, b_ptr, dz_ptr, gw_ptr, gb_ptr,
                                             P, C, H, W, OH, OW,
                                             sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                                             sdn, sdc, sdh, sdw,
                                             SH: tl.constexpr, SW: tl.constexpr,
                                             PH: tl.constexpr, PW: tl.constexpr,
                                             DH: tl.constexpr, DW: tl.constexpr,
                                             KH: tl.constexpr, KW: tl.constexpr,
                                             ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                             STORE_DZ: tl.constexpr, NEED_W: tl.constexpr,
                                             NEED_B: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                             PIX_AXIS: tl.constexpr, COMPUTE: tl.constexpr,
                                             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Grid: (cdiv(N*OH*OW, BLOCK_P), cdiv(C, BLOCK_C)). dz of the tile, optionally stored; this
    # program's partial sums over its pixels go to gb[pid_p, c] and gw[pid_p, c, tap].
    pid_p = tl.program_id(0)
    n, oh, ow, c, mask = _tile_indices(pid_p, tl.program_id(1), P, C, OH, OW, CHANNELS_LAST,
                                       BLOCK_P, BLOCK_C)
    g = tl.load(g_ptr + (n * sgn + oh * sgh + ow * sgw + c * sgc), mask=mask,
                other=0.0).to(COMPUTE)
    if ACT != 0:
        z = _depthwise_conv2d_pre_activation(x_ptr, w_ptr, b_ptr, n, oh, ow, c, mask, C, H, W,
                                             sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW, KH, KW,
                                             HAS_BIAS, CHANNELS_LAST, COMPUTE, BLOCK_P, BLOCK_C)
        dz = _activation_backward(g, z, ACT)
        if STORE_DZ:
            tl.store(dz_ptr + (n * sdn + oh * sdh + ow * sdw + c * sdc),
                     dz.to(dz_ptr.dtype.element_ty), mask=mask)
    else:
        dz = g
    c_ok = c < C
    if NEED_B:
        tl.store(gb_ptr + pid_p.to(tl.int64) * C + c,
                 tl.sum(dz, axis=PIX_AXIS, keep_dims=True).to(gb_ptr.dtype.element_ty),
                 mask=c_ok)
    if NEED_W:
        ih0 = oh * SH - PH
        iw0 = ow * SW - PW
        x_tile = x_ptr + (n * sxn + ih0 * sxh + iw0 * sxw + c * sxc)
        gw_row = gw_ptr + pid_p.to(tl.int64) * (KH * KW * C) + c
        for i in tl.static_range(KH):
            ih = ih0 + i * DH
            h_ok = mask & ((ih >= 0) & (ih < H))
            for j in tl.static_range(KW):
                iw = iw0 + j * DW
                ok = h_ok & ((iw >= 0) & (iw < W))
                xv = tl.load(x_tile + (i * DH * sxh + j * DW * sxw), mask=ok, other=0.0)
                part = tl.sum(dz * xv.to(COMPUTE), axis=PIX_AXIS, keep_dims=True)
                tl.store(gw_row + (i * KW + j) * C, part.to(gw_ptr.dtype.element_ty), mask=c_ok)


@_autotuned
@triton.jit
def _depthwise_conv2d_backward_input_kernel(dz_ptr, w_ptr, gx_ptr, P, C, H, W, OH, OW,
                                            sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                                            SH: tl.constexpr, SW: tl.constexpr,
                                            PH: tl.constexpr, PW: tl.constexpr,
                                            DH: tl.constexpr, DW: tl.constexpr,
                                            KH: tl.constexpr, KW: tl.constexpr,
                                            CHANNELS_LAST: tl.constexpr, COMPUTE: tl.constexpr,
                                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Grid: (cdiv(N*H*W, BLOCK_P), cdiv(C, BLOCK_C)); a gather over taps, one write per element:
    # tap (i, j) reads dz[oh, ow] with oh = (ih + ph - i*dh) / sh a whole number in [0, OH).
    n, ih, iw, c, mask = _tile_indices(tl.program_id(0), tl.program_id(1), P, C, H, W,
                                       CHANNELS_LAST, BLOCK_P, BLOCK_C)
    acc = _tile_zeros(COMPUTE, CHANNELS_LAST, BLOCK_P, BLOCK_C)
    c_ok = c < C
    w_row = w_ptr + c
    if SH == 1 and SW == 1:
        # Every tap is a scalar step from tap (0, 0).
        oh0 = ih + PH
        ow0 = iw + PW
        d_tile = dz_ptr + (n * sdn + oh0 * sdh + ow0 * sdw + c * sdc)
        for i in tl.static_range(KH):
            oh = oh0 - i * DH
            h_ok = mask & ((oh >= 0) & (oh < OH))
            for j in tl.static_range(KW):
                ow = ow0 - j * DW
                ok = h_ok & ((ow >= 0) & (ow < OW))
                dv = tl.load(d_tile - (i * DH * sdh + j * DW * sdw), mask=ok, other=0.0)
                wv = tl.load(w_row + (i * KW + j) * C, mask=c_ok, other=0.0)
                acc += dv.to(COMPUTE) * wv.to(COMPUTE)
    else:
        d_nc = dz_ptr + (n * sdn + c * sdc)
        for i in tl.static_range(KH):
            h_num = ih + (PH - i * DH)
            h_pos = tl.maximum(h_num, 0)
            oh = h_pos // SH
            h_ok = mask & ((h_num >= 0) & (h_pos % SH == 0) & (oh < OH))
            d_row = d_nc + oh * sdh
            for j in tl.static_range(KW):
                w_num = iw + (PW - j * DW)
                w_pos = tl.maximum(w_num, 0)
                ow = w_pos // SW
                ok = h_ok & ((w_num >= 0) & (w_pos % SW == 0) & (ow < OW))
                dv = tl.load(d_row + ow * sdw, mask=ok, other=0.0)
                wv = tl.load(w_row + (i * KW + j) * C, mask=c_ok, other=0.0)
                acc += dv.to(COMPUTE) * wv.to(COMPUTE)
    tl.store(gx_ptr + (n * sxn + ih * sxh + iw * sxw + c * sxc),
             acc.to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _block_sizes(pixels: int, channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) for a tile of about ``_TILE`` elements, no larger than the problem."""
    cap = _MAX_BLOCK_C_CHANNELS_LAST if channels_last else _MAX_BLOCK_C_CONTIGUOUS
    block_c = max(_MIN_BLOCK, min(triton.next_power_of_2(max(channels, 1)), cap))
    block_p = max(_MIN_BLOCK, min(triton.next_power_of_2(max(pixels, 1)), _TILE // block_c))
    return block_p, block_c


def _launch_tiled(kernel: triton.runtime.Autotuner, device: torch.device, pixels: int,
                  channels: int, channels_last: bool, *args: object, **kwargs: object) -> None:
    """Launch an autotuned kernel on a (pixel blocks, channel blocks) grid: tuned on CUDA
    tensors, with the rule's tile under the interpreter."""
    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(channels, meta["BLOCK_C"])

    if device.type == "cuda":
        kernel[grid](*args, **kwargs)
        return
    block_p, block_c = _block_sizes(pixels, channels, channels_last)
    kernel.fn[grid](*args, **kwargs, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_NUM_WARPS)


def _compute_dtype(dtype: torch.dtype) -> tuple[tl.dtype, torch.dtype]:
    """Triton and torch dtypes the kernels accumulate in."""
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def _activation_code(activation: str | None) -> int:
    name = "none" if activation is None else activation
    if name not in ACTIVATION_CODES:
        raise ValueError(f"depthwise_conv2d: activation must be one of "
                         f"{sorted(ACTIVATION_CODES)}, got {activation!r}")
    return ACTIVATION_CODES[name]


def _prepare(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Inputs in the layouts the kernels take, and whether x is worked on as channels_last.

    The weight goes to the kernels tap-major, (kh*kw, C) contiguous, so that a tap's weights are
    contiguous over channels (one vector load per tap in NHWC).
    """
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d: x must have rank 4, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f"depthwise_conv2d: weight must have shape (C, 1, kh, kw) with "
                         f"C={x.shape[1]}, got {tuple(weight.shape)}")
    channels_last = uses_channels_last(x)
    x = x if channels_last else x.contiguous()
    bias = None if bias is None else bias.contiguous()
    taps = weight.reshape(weight.shape[0], weight.shape[2] * weight.shape[3]).t().contiguous()
    return x, taps, bias, channels_last


def _conv_constexprs(kernel: tuple[int, int], stride: list[int], padding: list[int],
                     dilation: list[int]) -> dict[str, int]:
    return {"SH": int(stride[0]), "SW": int(stride[1]), "PH": int(padding[0]),
            "PW": int(padding[1]), "DH": int(dilation[0]), "DW": int(dilation[1]),
            "KH": int(kernel[0]), "KW": int(kernel[1])}


def depthwise_conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: list[int], padding: list[int], dilation: list[int],
                             activation: str) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, stride, padding, dilation, groups=C))``.

    ``x`` (N, C, H, W) contiguous or channels_last (anything else is made contiguous), ``weight``
    (C, 1, kh, kw), ``bias`` (C,) or None; ``stride``, ``padding`` (symmetric), ``dilation`` are
    (height, width) pairs; ``activation`` one of "none", "relu", "relu6", "hardswish", "silu".
    The output is channels_last iff ``uses_channels_last(x)``, else contiguous.
    """
    act = _activation_code(activation)
    kernel = (weight.shape[2], weight.shape[3])
    x, taps, bias, channels_last = _prepare(x, weight, bias)
    batch, channels, height, width = x.shape
    out_h, out_w = conv_output_hw(x, kernel, stride, padding, dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((batch, channels, out_h, out_w), dtype=x.dtype, device=x.device,
                      memory_format=fmt)
    if out.numel() == 0:
        return out
    pixels = batch * out_h * out_w
    _launch_tiled(
        _depthwise_conv2d_forward_kernel, x.device, pixels, channels, channels_last,
        x, taps, x if bias is None else bias, out, pixels, channels, height, width, out_h,
        out_w, *x.stride(), *out.stride(), **_conv_constexprs(kernel, stride, padding, dilation),
        ACT=act, HAS_BIAS=bias is not None, CHANNELS_LAST=channels_last,
        COMPUTE=_compute_dtype(x.dtype)[0])
    return out


def depthwise_conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None, stride: list[int], padding: list[int],
                              dilation: list[int], activation: str, output_mask: list[bool]
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_x, grad_w, grad_b)`` of :func:`depthwise_conv2d_forward`.

    The pre-activation is recomputed from ``x`` (nothing else is saved). ``grad_x`` is
    channels_last iff ``uses_channels_last(x)``, else contiguous; ``grad_w`` is (C, 1, kh, kw)
    contiguous; ``grad_b`` is (C,). A gradient whose ``output_mask`` entry is False (and
    ``grad_b`` when ``bias`` is None) is ``x.new_empty(0)``. Weight and bias gradients are reduced
    in a fixed order (per-program partial sums, then one sum), so results are deterministic.
    """
    act = _activation_code(activation)
    need_x, need_w, need_b = (bool(m) for m in output_mask)
    need_b = need_b and bias is not None
    # Each unrequested gradient is its own empty tensor: custom-op outputs must not alias.
    grad_x, grad_w, grad_b = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    weight_shape = weight.shape
    kernel = (weight.shape[2], weight.shape[3])
    x, taps, bias, channels_last = _prepare(x, weight, bias)
    batch, channels, height, width = x.shape
    out_h, out_w = conv_output_hw(x, kernel, stride, padding, dilation)
    if tuple(grad_out.shape) != (batch, channels, out_h, out_w):
        raise ValueError(f"depthwise_conv2d_backward: grad_out has shape "
                         f"{tuple(grad_out.shape)}, expected {(batch, channels, out_h, out_w)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if not grad_out.is_contiguous(memory_format=fmt):
        grad_out = grad_out.contiguous(memory_format=fmt)
    compute_tl, compute_torch = _compute_dtype(x.dtype)
    conv = _conv_constexprs(kernel, stride, padding, dilation)
    pixels = batch * out_h * out_w
    has_work = grad_out.numel() > 0

    if need_x:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    store_dz = need_x and act != 0
    dz = grad_out
    if store_dz:
        dz = torch.empty((batch, channels, out_h, out_w), dtype=compute_torch, device=x.device,
                         memory_format=fmt)

    block_p, block_c = _block_sizes(pixels, channels, channels_last)
    n_pblocks = triton.cdiv(pixels, block_p)
    w_parts = (torch.empty((n_pblocks, taps.shape[0], channels), dtype=compute_torch,
                           device=x.device) if need_w and has_work else None)
    b_parts = (torch.empty((n_pblocks, channels), dtype=compute_torch, device=x.device)
               if need_b and has_work else None)
    if has_work and (need_w or need_b or store_dz):
        grid = (n_pblocks, triton.cdiv(channels, block_c))
        _depthwise_conv2d_backward_weight_kernel[grid](
            grad_out, x, taps, x if bias is None else bias, dz,
            x if w_parts is None else w_parts, x if b_parts is None else b_parts,
            pixels, channels, height, width, out_h, out_w,
            *x.stride(), *grad_out.stride(), *dz.stride(), **conv,
            ACT=act, HAS_BIAS=bias is not None, STORE_DZ=store_dz, NEED_W=need_w, NEED_B=need_b,
            CHANNELS_LAST=channels_last, PIX_AXIS=0 if channels_last else 1, COMPUTE=compute_tl,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_NUM_WARPS)

    if need_x and x.numel() > 0:
        in_pixels = batch * height * width
        _launch_tiled(
            _depthwise_conv2d_backward_input_kernel, x.device, in_pixels, channels,
            channels_last, dz, taps, grad_x, in_pixels, channels, height, width, out_h, out_w,
            *dz.stride(), *grad_x.stride(), **conv, CHANNELS_LAST=channels_last,
            COMPUTE=compute_tl)

    if need_w:
        # (blocks, taps, C) partials -> (taps, C) -> (C, 1, kh, kw), summed in a fixed order.
        grad_w = (w_parts.sum(0).t().to(x.dtype).contiguous().view(weight_shape)
                  if w_parts is not None
                  else torch.zeros(weight_shape, dtype=x.dtype, device=x.device))
    if need_b:
        grad_b = (b_parts.sum(0).to(x.dtype) if b_parts is not None
                  else torch.zeros(channels, dtype=x.dtype, device=x.device))
    return grad_x, grad_w, grad_b
