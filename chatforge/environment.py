"""The software and machine a run used, written beside its numbers: two report cards are comparable only when
these match (a new transformers or another CPU moves the numbers; docs/README.md#pinned-versions)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import chatforge

PACKAGES = ("torch", "transformers", "tokenizers", "peft", "safetensors", "numpy")


def versions() -> dict[str, str]:
    """{name: version} of python, chatforge and the packages whose versions move the numbers."""
    found = {"python": platform.python_version(), "chatforge": chatforge.__version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def versions_line() -> str:
    """The versions on one line: 'python 3.11.7, chatforge 0.1.0, torch 2.13.0+cpu, ...'."""
    return ", ".join(f"{name} {version}" for name, version in versions().items())


def machine() -> dict[str, str]:
    """The CPU (as lscpu names it), its logical cores, torch's threads, the OS, and the GPU where CUDA has one."""
    import torch

    cpu = cpuinfo()
    gpu = "none"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        gpu = f"{count} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return {"cpu": cpu.get("model name") or platform.processor() or platform.machine() or "unknown",
            "cpu_family": cpu.get("cpu family", "unknown"), "cpu_model": cpu.get("model", "unknown"),
            "cores": str(os.cpu_count() or "unknown"), "torch_threads": str(torch.get_num_threads()),
            "platform": platform.platform(), "gpu": gpu}


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, MiB (None where the OS does not say, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as lines:
            for line in lines:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return {key: value for key, value in fields.items() if value}


if __name__ == "__main__":  # scripts/setup_venv.sh prints this when it is done
    print(versions_line())
