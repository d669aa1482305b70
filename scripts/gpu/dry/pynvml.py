"""Dry runs of scripts/gpu-check.sh: no NVIDIA driver here (the agent then offers no GPU; the
script gives it the mock accelerator's slots instead)."""


def nvmlInit() -> None:
    raise RuntimeError("dry run: no NVIDIA driver")
