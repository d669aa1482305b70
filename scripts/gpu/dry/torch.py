"""A stand-in for torch in ``GPU_CHECK_DRY=1`` runs of scripts/gpu-check.sh on a machine without
a GPU: it exercises the script's plumbing only (a half is 'refused' at 70 GiB, nothing is
allocated)."""


class OutOfMemoryError(RuntimeError):
    pass


class _Cuda:
    taken = 0

    @staticmethod
    def get_device_name() -> str:
        return "NVIDIA H200 (dry run: no GPU)"


cuda = _Cuda()
uint8 = "uint8"


def empty(n: int, dtype: object = None, device: object = None) -> object:
    if cuda.taken >= 70:
        raise OutOfMemoryError("CUDA out of memory (dry run)")
    cuda.taken += 1
    return object()
