"""Runs INSIDE a bai session on the device machine (scripts/gpu-check.sh): takes device memory
1 GiB at a time until the driver (MPS) refuses or ``limit`` GiB are held, then holds it for
``hold`` seconds so that a second session runs at the same time. Prints one line per finding:
``DEVICE <name>``, ``ALLOCATED <GiB>``, ``REFUSED <error>`` (or ``NOT-REFUSED``)."""

import os
import sys
import time

import torch

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 200
hold = float(sys.argv[2]) if len(sys.argv) > 2 else 20
print("DEVICE", torch.cuda.get_device_name(), flush=True)
print("VISIBLE", os.environ.get("CUDA_VISIBLE_DEVICES", ""),
      os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", ""), flush=True)
held = []
refused = ""
for _ in range(limit):
    try:
        held.append(torch.empty(2**30, dtype=torch.uint8, device="cuda"))
    except Exception as e:  # torch.OutOfMemoryError / RuntimeError from the MPS limit
        refused = str(e).splitlines()[0][:200]
        break
print("ALLOCATED", len(held), flush=True)
print(f"REFUSED {refused}" if refused else "NOT-REFUSED", flush=True)
time.sleep(hold)
