"""Device and distributed-world resolution, once, for every command.

* `world()`: where this process sits in a torchrun job, from RANK, WORLD_SIZE and LOCAL_RANK
  (rank 0 of 1 outside torchrun).
* `parse_device(spec)`: what a device spec names, without looking at the machine.
* `resolve_device(spec, local_rank)`: the torch device to use. "auto" picks CUDA if it is
  visible and the CPU otherwise, "cpu" is the CPU, "cuda" is the GPU of this process's local
  rank (or the current GPU when no rank is given), and "cuda:N" is GPU N.

* `to_device(t, device)`: a host tensor onto the device; onto a GPU through pinned memory, so the
  copy is queued instead of waiting for the work already queued on the GPU.
* `constant(values, device, dtype)`: a small constant tensor made once per device and reused (a
  `torch.tensor(..., device="cuda")` per training step is a copy that waits for the GPU).
* `emulated_bf16_warning(spec)`: the warning for bf16 asked of a CPU that has no bf16 instructions.
* `available_cpus()`: the CPU cores this process may use (its affinity), what worker pools default to.
* `use_tf32(enabled)` / `tf32(enabled)`: TF32 tensor cores for float32 matmuls and convolutions on a GPU,
  set (returning the previous setting) or for a block.

A spec that names no such device, or a GPU this machine does not have, raises `DeviceError`
with one line that names the option (`--device` or `train.device`) and what to use instead.

torch is imported only when a device is resolved, so `world()` stays cheap for the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from .errors import HPDMError

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "World", "world", "parse_device", "resolve_device", "to_device", "randn_on",
           "emulated_bf16_warning"]

_FORMS = "auto, cpu, cuda or cuda:N"


class DeviceError(HPDMError, RuntimeError):
    """The requested device is not a device hpdm can use, or not on this machine (one line says what to do)."""


class World(NamedTuple):
    """This process's place in a torchrun job (0, 1, 0 for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity, e.g. a batch job's allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                  # not on Linux
        return os.cpu_count() or 1


def world() -> World:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (defaults: a single process)."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                 int(os.environ.get("LOCAL_RANK", "0")))


def _named(option: str, text: str, *, quote: bool = False) -> str:
    """`--device cuda:3` for a command-line option, `train.device = "cuda"` for a recipe key."""
    if option.startswith("-"):
        return f"{option} {text!r}" if quote else f"{option} {text}"
    return f"{option} = {json.dumps(text)}"


def _use_cpu(option: str) -> str:
    return f"{option} cpu" if option.startswith("-") else f"{option}=cpu"


def parse_device(spec: Union[str, "torch.device", None] = "auto", *,
                 option: str = "--device") -> Optional["torch.device"]:
    """The device a spec names (None for "auto"), without checking that this machine has it.

    A torch.device is returned as it is; a string must be auto, cpu, cuda or cuda:N (any case).
    """
    import torch
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return None
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{_named(option, text, quote=True)}: expected {_FORMS}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"{_named(option, text, quote=True)}: expected {_FORMS}")
    return dev


def resolve_device(spec: Union[str, "torch.device", None] = "auto", local_rank: Optional[int] = None, *,
                   option: str = "--device") -> "torch.device":
    """The torch device a spec asks for on this machine (a torch.device is returned as it is).

    "auto": CUDA if visible, else the CPU. "cuda" (and "auto" on a CUDA machine): GPU
    `local_rank`, or the current GPU ("cuda") when `local_rank` is None. "cuda:N": GPU N.
    Raises DeviceError, naming `option`, for an unknown spec, CUDA on a machine without it, or a
    GPU index (or local rank) beyond the visible GPUs.
    """
    import torch
    if isinstance(spec, torch.device):
        return spec
    dev = parse_device(spec, option=option)
    text = (spec or "auto").strip().lower()
    if dev is None:                                                       # "auto"
        if not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device("cuda")
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f"{_named(option, text)}: no CUDA device is visible; use {_use_cpu(option)}")
    count = torch.cuda.device_count()
    if dev.index is None:
        if local_rank is None:
            return dev
        if local_rank >= count:
            raise DeviceError(f"local rank {local_rank} but only {count} CUDA device(s) are visible; start at most "
                              "that many processes per node (torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    if dev.index >= count:
        raise DeviceError(f"{_named(option, text)}: only {count} CUDA device(s) visible")
    return dev


def emulated_bf16_warning(spec: Union[str, "torch.device", None] = "auto", what: str = "--bf16",
                          fix: str = "leave --bf16 out") -> Optional[str]:
    """A one-line warning when bf16 would run on a CPU without bf16 instructions (AVX512-BF16 or AMX-BF16), else None.

    There torch emulates bf16 arithmetic: the packaged model sampled 4.9x slower than in float32 on a
    2-core AVX2 CPU, where a CPU with AVX512-BF16 samples 1.4x faster (docs/benchmarks.md, "The packaged
    model on the CPU in bf16"). A spec that names no usable device gives None: the command reports it.
    """
    import torch
    try:
        dev = resolve_device(spec)
    except DeviceError:
        return None
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if dev.type != "cpu" or capabilities is None:
        return None
    has = capabilities()
    if has.get("avx512_bf16") or has.get("amx_bf16"):
        return None
    return (f"{what} on this CPU (no AVX512-BF16 or AMX-BF16 instructions) is emulated by torch, about 5x slower "
            f"than float32: {fix}")


def to_device(t: "torch.Tensor", device) -> "torch.Tensor":
    """Move `t` to `device`; a host tensor goes to a GPU from pinned memory without waiting for queued GPU work.

    A plain copy from pageable host memory waits for everything queued on the GPU, so a training
    step's host-side draws would stall the host once per step.
    """
    import torch
    if device is None:
        return t
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def use_tf32(enabled: bool) -> tuple:
    """Let a GPU's float32 matmuls and convolutions use TF32 tensor cores, or not; returns the previous setting."""
    import torch
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    return before


@contextlib.contextmanager
def tf32(enabled: bool):
    """`use_tf32(enabled)` for the block, the previous setting restored after it."""
    import torch
    before = use_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def constant(values: tuple, device, dtype=None) -> "torch.Tensor":
    """The tensor of `values` (nested tuples of numbers) on `device`, made on the first call and cached.

    Callers must not modify it in place: every later call with the same arguments returns it.
    """
    import torch
    return _constant(values, str(torch.device(device) if device is not None else "cpu"), dtype or torch.float32)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, device: str, dtype) -> "torch.Tensor":
    import torch
    return torch.tensor(values, dtype=dtype, device=device)


def randn_on(device, shape, generator: "torch.Generator", dtype=None) -> "torch.Tensor":
    """Standard normal `shape` drawn on `device` by a generator of that device seeded from CPU `generator`.

    Only one number is taken from `generator`, so a large draw costs no host work and no copy; the
    values repeat on every run on that kind of device (a CPU and a GPU give different ones).
    """
    import torch
    device = torch.device(device)
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    return torch.randn(shape, generator=torch.Generator(device=device).manual_seed(seed), device=device, dtype=dtype)
