"""A fake of the few NVML calls the agent makes (``pynvml`` of nvidia-ml-py), for tests on
machines without any NVIDIA library: a host with the given GPUs, or one whose driver is missing.
Put an instance where ``import pynvml`` finds it (``sys.modules["pynvml"]``) or pass it to
``detect_nvidia``."""

from __future__ import annotations

from types import SimpleNamespace

GIB = 2**30


class NvmlError(Exception):
    pass


class FakeNvml:
    """Behaves as pynvml does for the calls the agent makes: a host with ``gpus`` (name,
    memory), or one whose driver is missing (``init_error``)."""

    def __init__(self, gpus: list[tuple[str, int]], init_error: bool = False,
                 compute_mode: int = 3):
        self.gpus = gpus
        self.init_error = init_error
        self.compute_mode = compute_mode  # 3: EXCLUSIVE_PROCESS, 0: DEFAULT
        self.shut = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NvmlError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < len(self.gpus):
            raise NvmlError("Invalid Argument")
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-fake-{h}"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][0].encode()  # older nvidia-ml-py answers bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.gpus[h][1], used=0, free=self.gpus[h][1])

    def nvmlDeviceGetMinorNumber(self, h: int) -> int:
        return h

    def nvmlDeviceGetComputeMode(self, h: int) -> int:
        return self.compute_mode
