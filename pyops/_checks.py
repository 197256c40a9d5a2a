"""Argument checks shared by the public ops: each error names the argument and what was expected."""

from __future__ import annotations

import torch

from mobilefuse.backends import FLOAT_DTYPES


def check_tensor(op: str, name: str, value: object) -> torch.Tensor:
    """``value`` if it is a tensor, else TypeError."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"mobilefuse.{op}: {name} must be a torch.Tensor, "
                        f"got {type(value).__name__}")
    return value


def check_float_tensor(op: str, name: str, value: object) -> torch.Tensor:
    """``value`` if it is a float16/bfloat16/float32/float64 tensor, else TypeError."""
    t = check_tensor(op, name, value)
    if t.dtype not in FLOAT_DTYPES:
        expected = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise TypeError(f"mobilefuse.{op}: {name} must have a floating dtype ({expected}), "
                        f"got {t.dtype}")
    return t


def check_min_rank(op: str, name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    """ValueError unless ``t`` has at least ``rank`` dimensions."""
    if t.dim() < rank:
        raise ValueError(f"mobilefuse.{op}: {name} must have rank >= {rank} {layout}, "
                         f"got shape {tuple(t.shape)}")


def check_groups(op: str, groups: object, channels: int) -> int:
    """``groups`` as an int if it is a positive integer dividing ``channels``."""
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"mobilefuse.{op}: groups must be an int, got {type(groups).__name__}")
    if groups <= 0:
        raise ValueError(f"mobilefuse.{op}: groups must be positive, got {groups}")
    if channels % groups:
        raise ValueError(f"mobilefuse.{op}: groups ({groups}) must divide the channel count "
                         f"C={channels}")
    return groups


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    """ValueError when the tensors are not all on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"mobilefuse.{op}: all tensors must be on one device, got {listed}")


def check_vector(op: str, name: str, value: object, size: int) -> torch.Tensor:
    """``value`` if it is a tensor of shape ``(size,)`` (a bias), else TypeError/ValueError."""
    t = check_tensor(op, name, value)
    if tuple(t.shape) != (size,):
        raise ValueError(f"mobilefuse.{op}: {name} must have shape ({size},), got "
                         f"{tuple(t.shape)}")
    return t


def check_pointwise_weight(op: str, name: str, value: object, rows: int | None,
                           cols: int | None, expected: str) -> torch.Tensor:
    """A 1x1 weight ``(rows, cols)`` or ``(rows, cols, 1, 1)`` (None: any count, at least one)
    as a matrix; ValueError naming ``expected`` otherwise."""
    w = check_tensor(op, name, value)
    shape = w.shape
    ok = len(shape) == 2 or (len(shape) == 4 and shape[2] == 1 and shape[3] == 1)
    if ok:
        ok = (rows is None or shape[0] == rows) and (cols is None or shape[1] == cols)
    if not ok or shape[0] == 0:
        raise ValueError(f"mobilefuse.{op}: {name} must have shape {expected} (or the same with "
                         f"trailing 1, 1 as a 1x1 conv weight), got {tuple(shape)}")
    # Dropping the two size-1 dims is always a view.
    return w if len(shape) == 2 else w.view(shape[0], shape[1])


def check_like_x(op: str, tensors: dict[str, torch.Tensor]) -> None:
    """TypeError/ValueError unless every tensor has the dtype and device of ``tensors["x"]``."""
    x = tensors["x"]
    dtype, device = x.dtype, x.device
    for name, t in tensors.items():
        if t.dtype != dtype:
            raise TypeError(f"mobilefuse.{op}: {name} must have x's dtype {dtype}, got {t.dtype}")
        if t.device != device:
            check_same_device(op, **tensors)


def check_same_shape_dtype(op: str, name: str, t: torch.Tensor, like_name: str,
                           like: torch.Tensor) -> None:
    """ValueError/TypeError when ``t`` differs from ``like`` in shape or dtype."""
    if t.shape != like.shape:
        raise ValueError(f"mobilefuse.{op}: {name} must have the shape of {like_name} "
                         f"{tuple(like.shape)}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"mobilefuse.{op}: {name} must have the dtype of {like_name} "
                        f"({like.dtype}), got {t.dtype}")
