"""Device and dtype choice: the only place that decides where and how the forward pass runs.

`resolve_device` takes what Ray assigned as plain data (the GPU ids), so this package never
imports Ray; the Serve replica, the Ray Data actor and the in-process classifier all call it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The CPU flags of bf16 matrix instructions (AVX512-BF16, Intel AMX): where bf16 is fast.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags, from /proc/cpuinfo ("", {} where there is none)."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return name, flags


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions, where bf16 is fast."""
    return bool(cpu_info()[1] & set(BF16_CPU_FLAGS))


def resolve_device(
    configured: str = "auto",
    gpu_ids: Sequence[int | str] | None = None,
    *,
    visible: str | None | object = "env",
    cuda_devices: int | None = None,
) -> torch.device:
    """The torch device for `configured` ('auto', 'cpu', 'cuda', 'cuda:N').

    'auto' under Ray (`gpu_ids` = `ray.get_gpu_ids()`): CUDA only when Ray assigned a GPU,
    since Ray 2.60 no longer hides GPUs from zero-GPU workers. Ray narrows CUDA_VISIBLE_DEVICES
    (`visible`, read from the environment unless given) to the assigned ids, so the first id's
    place in it is the torch index; with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES it stays
    unset, every GPU is visible and the id is the index. 'auto' outside Ray (`gpu_ids` None):
    the first GPU when CUDA has one. A node that declares GPUs CUDA cannot drive
    (`cuda_devices`: how many torch counts) runs on the CPU.
    """
    if configured != "auto":
        return torch.device(configured)
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpu_ids is None:
        return torch.device("cuda:0" if cuda_devices else "cpu")
    if not gpu_ids:
        return torch.device("cpu")
    if visible == "env":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = str(gpu_ids[0])
    shown = [v.strip() for v in str(visible or "").split(",") if v.strip()]
    if first in shown:
        index = shown.index(first)
    elif not shown and first.isdigit():
        index = int(first)
    else:
        index = 0
    if index >= cuda_devices:
        log.warning(
            "Ray assigned GPU %s but CUDA sees %d device(s) (CUDA_VISIBLE_DEVICES=%r): "
            "running on the CPU",
            first,
            cuda_devices,
            visible,
        )
        return torch.device("cpu")
    return torch.device(f"cuda:{index}")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        try:
            return _DTYPES[dtype]
        except KeyError:
            raise ValueError(
                f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}"
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and os.environ.get("ZEROSHOT_CPU_BF16", "auto") != "0":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
