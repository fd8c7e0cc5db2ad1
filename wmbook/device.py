"""Device choice, seeding, determinism and mixed precision, the same on CPU, CUDA and MPS.

Every chapter starts with::

    device = pick_device("auto")        # cuda, then mps, then cpu
    seed_everything(seed)               # python, numpy, torch (+ cuda)
    print(environment_stamp(device))    # what produced the numbers below
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preference: str | torch.device = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"`` picks CUDA when a GPU is visible, then Apple's MPS, then the CPU. An explicit
    ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` is honoured, and fails loudly when that
    device is not available rather than silently falling back.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    if not isinstance(preference, str):
        raise TypeError(f"device must be a string such as 'auto' or 'cuda', got {preference!r}")
    choice = preference.strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = choice.split(":")[0]
    if kind not in DEVICE_CHOICES[1:]:
        raise ValueError(
            f"unknown device {preference!r}: use one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N')"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} was asked for, but torch sees no CUDA GPU")
    if kind == "mps" and not _mps_available():
        raise RuntimeError(f"device {preference!r} was asked for, but MPS is not available")
    return torch.device(choice)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA included).

    Code in ``wmbook`` takes explicit generators where it draws random numbers; this call
    covers what cannot, such as the default weight initialisation of ``torch.nn`` layers.
    With ``deterministic=True`` torch is also asked for deterministic kernels.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        set_deterministic()


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic algorithms (cuDNN and cuBLAS included)."""
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible reductions; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def set_threads(n: int | None = None) -> int:
    """Fix torch's intra-op thread count (default: all cores, capped at 4) and return it.

    A fixed count keeps CPU reductions in the same order from run to run; small networks gain
    little from more than a couple of threads.
    """
    if n is None:
        n = min(4, os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n


def autocast(device: torch.device | str, enabled: bool = True):
    """Mixed-precision context for a forward pass and its loss on ``device``.

    Inside it, torch's autocast runs matrix products in :func:`amp_dtype` (bfloat16 or
    float16) and keeps reductions and losses (``mse_loss``, ``smooth_l1_loss``, binary
    cross-entropy) in float32; parameters, their gradients and the optimiser state stay float32
    throughout. Where :func:`amp_dtype` is float32 (the CPU, MPS) or ``enabled`` is false it is
    a no-op, so CPU results are bit for bit those of plain float32 code. CPU autocast to
    bfloat16 is slower than float32 for the book's small networks and costs precision, so it
    is never used.
    """
    device = torch.device(device)
    dtype = amp_dtype(device) if enabled else torch.float32
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype :func:`autocast` computes in on ``device``.

    bfloat16 on a GPU with native bfloat16 (Ampere or newer): it has float32's range, so no
    gradient scaling is needed. float16 on older GPUs, where bfloat16 would only be emulated
    (slowly); float16's narrow range then needs :func:`grad_scaler`. float32, meaning no
    autocast, everywhere else.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    # is_bf16_supported asks about the current GPU: make it the one asked for
    with torch.cuda.device(device.index) if device.index is not None else contextlib.nullcontext():
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def grad_scaler(device: torch.device | str, enabled: bool = True) -> torch.amp.GradScaler:
    """A gradient scaler, active only when :func:`autocast` runs in float16.

    Small float16 gradients underflow to zero, so the loss is multiplied by a large factor
    before ``backward`` and the gradients divided by it again (``unscale_``) before clipping
    and the optimiser step; a step whose gradients overflowed is skipped and the factor
    lowered. Inactive, every method passes through (``scale`` returns the loss unchanged,
    ``step`` calls ``optimizer.step()``), so one training loop serves every device.
    """
    device = torch.device(device)
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=active)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, array, or a (nested) dict/list/tuple of them to ``device``.

    NumPy arrays become tensors. For a CUDA target, host tensors are first copied to pinned
    (page-locked) memory, from which the GPU copies them without blocking the host: work queued
    after the copy on the same stream sees the data, so nothing else is needed for
    correctness. Every other move is an ordinary blocking ``.to(device)``.
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, np.ndarray):
        return to_device(torch.from_numpy(batch), device)
    if isinstance(batch, dict):  # keeps dict subclasses (OrderedDict, defaultdict, ...)
        moved = copy.copy(batch)
        moved.update((key, to_device(value, device)) for key, value in batch.items())
        return moved
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def cpu_model() -> str:
    """The processor's model name, e.g. ``"AMD EPYC"`` ("unknown" where the system does not say).

    Part of the stamp because the same seed can give different numbers on different CPUs:
    vectorised float kernels differ between processor families.
    """
    try:
        with open("/proc/cpuinfo") as info:  # Linux
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_stamp(device: torch.device | str) -> dict[str, str]:
    """What produced a result, as a flat dict of strings: device, library versions, threads,
    the CPU's model and the instruction set torch's CPU kernels use.

    ``"cpu capability"`` is :func:`torch.backends.cpu.get_cpu_capability`, e.g. ``"AVX2"`` or
    ``"AVX512"``: torch picks its vectorised CPU kernels by it, so two machines that differ
    there may give slightly different numbers for the same seed.
    """
    import gymnasium

    device = torch.device(device)
    stamp = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "torch threads": str(torch.get_num_threads()),
        "cpu": cpu_model(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cpu cores": str(os.cpu_count()),
        "platform": f"{platform.system()} {platform.machine()}",
    }
    if device.type == "cuda":
        stamp["gpu"] = torch.cuda.get_device_name(device)
        stamp["cuda"] = str(torch.version.cuda)
    if "google.colab" in sys.modules:
        stamp["runtime"] = "Colab"
    return stamp


def format_stamp(stamp: Mapping[str, str]) -> str:
    """Render :func:`environment_stamp` as aligned ``key: value`` lines."""
    width = max(len(key) for key in stamp)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in stamp.items())
