"""oneDNN's convolutions for bfloat16 runs on a CPU (``config.cpu_onednn``).

XLA:CPU's own bfloat16 convolutions run no faster than its float32 ones; with two of its flags it hands them to
oneDNN (the library behind PyTorch's CPU convolutions), whose kernels use the CPU's bf16 dot instructions. The
flags are read when JAX starts its CPU backend, so ``configure`` adds them to ``XLA_FLAGS`` before that, for a run
that wants them: 'auto' = bfloat16 compute on a CPU with AVX512_BF16 or AMX-BF16; 'on'; 'off'. Not for float32:
the same flags make the float32 Winograd step slower (benchmarks/results, README).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jsr.runtime import backend_started

FLAGS = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true")
CHOICES = ("auto", "on", "off")
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo names of the bf16 dot instructions


def x86_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The x86 CPU's feature flags from ``cpuinfo`` (Linux), or None where unknown (no such file; ARM lists
    'Features' instead)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return None
    flag_lines = [line.split(":", 1)[-1] for line in lines if line.startswith("flags")]
    return {word for line in flag_lines for word in line.split()} if flag_lines else None


def cpu_has_bf16_dot(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists AVX512_BF16 or AMX-BF16 (x86 Linux; elsewhere unknown, so False)."""
    return bool((x86_cpu_flags(cpuinfo) or set()) & BF16_CPU_FLAGS)


def slow_bf16_note(compute_dtype: str, backend: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """What to tell a bfloat16 run on an x86 CPU known to lack bf16 dot instructions: there it computes slower than
    float32 (measured on an AVX2 Zen 3). Other CPUs (ARM, unknown) are not told: not measured."""
    flags = x86_cpu_flags(cpuinfo)
    if compute_dtype != "bfloat16" or backend != "cpu" or flags is None or flags & BF16_CPU_FLAGS:
        return None
    return (
        "note: compute_dtype=bfloat16 on a CPU without AVX512_BF16 / AMX-BF16 trains SLOWER than float32 here "
        "(README, Performance): --config.compute_dtype=float32 is faster"
    )


def wanted(choice: str, compute_dtype: str, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    if choice not in CHOICES:
        raise ValueError(f"cpu_onednn={choice!r}: choose from {CHOICES}")
    if choice == "auto":
        return compute_dtype == "bfloat16" and cpu_has_bf16_dot(cpuinfo)
    return choice == "on"


def active() -> bool:
    """Whether this process's XLA_FLAGS hand convolutions to oneDNN (set by ``configure`` or by the user)."""
    given = os.environ.get("XLA_FLAGS", "").split()
    return all(flag in given for flag in FLAGS)


def takes_convs(compute_dtype: str) -> bool:
    """Whether a run in ``compute_dtype`` has its CPU convolutions taken by oneDNN (conv path 'onednn' pays)."""
    return active() and compute_dtype == "bfloat16"


def _user_set() -> bool:
    """Whether XLA_FLAGS already names either flag, in any value: the user's word stands."""
    names = tuple(flag.split("=")[0] for flag in FLAGS)
    return any(token.split("=")[0] in names for token in os.environ.get("XLA_FLAGS", "").split())


def configure(choice: str, compute_dtype: str) -> bool:
    """Add ``FLAGS`` to ``XLA_FLAGS`` if the run wants them and JAX's backends have not started (they read the
    flags once); returns whether they are on. Never removes flags the user set."""
    if not wanted(choice, compute_dtype) or _user_set():
        return active()
    if backend_started():
        print(
            "note: config.cpu_onednn: JAX had already started, so this process keeps XLA's own convolutions "
            f"(start it with XLA_FLAGS='{' '.join(FLAGS)}', or run jsr-train)",
            file=sys.stderr,
        )
        return False
    os.environ["XLA_FLAGS"] = " ".join([*os.environ.get("XLA_FLAGS", "").split(), *FLAGS])
    return True
