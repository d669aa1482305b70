"""A mock accelerator: ``cuda.device`` slots become device indices so that kernels see which
"GPUs" they hold (``CUDA_VISIBLE_DEVICES``) and scheduling on accelerators is testable without one.

``cuda.shares`` (fractional) needs no indices; the scheduler's accounting is all it takes.
"""

from __future__ import annotations

from decimal import Decimal


class MockCudaDevices:
    def __init__(self, count: int):
        self.count = count
        #: kernel id -> device indices it holds
        self.held: dict[str, list[int]] = {}

    def allocate(self, kernel_id: str, amount: Decimal) -> list[int]:
        """Indices for ``amount`` whole devices (first free ones). Raises ValueError if short."""
        if kernel_id in self.held:
            return self.held[kernel_id]
        n = int(amount)
        if n <= 0:
            return []
        busy = {i for idx in self.held.values() for i in idx}
        free = [i for i in range(self.count) if i not in busy]
        if len(free) < n:
            raise ValueError(f"cuda.device: {n} requested, {len(free)} free of {self.count}")
        self.held[kernel_id] = free[:n]
        return self.held[kernel_id]

    def restore(self, kernel_id: str, indices: list[int]) -> None:
        self.held[kernel_id] = list(indices)

    def release(self, kernel_id: str) -> None:
        self.held.pop(kernel_id, None)

    @staticmethod
    def environ(indices: list[int]) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in indices)} if indices else {}
