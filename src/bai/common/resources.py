"""Resource slots: decimal amounts keyed by slot name.

Slot names: ``cpu`` (cores), ``mem`` (bytes), ``cuda.device`` (whole GPUs), ``cuda.shares``
(fractional GPU shares), and any other ``<device>.<unit>`` an agent reports. Amounts are
``Decimal`` so that ``0.1 + 0.2`` fits exactly into ``0.3``. A missing slot means zero.

Users write sizes as ``8g``, ``512m``, ``1.5G``, ``256MiB`` or plain bytes; ``parse_request``
turns ``{"cpu": "4", "mem": "8g"}`` into slots and names the bad entry when it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from bai.common.errors import InvalidResourceSpec

_BINARY_SUFFIX = {
    "": 1, "b": 1,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50, "e": 2**60,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)

KNOWN_SLOTS = ("cpu", "mem", "cuda.device", "cuda.shares")
#: Slots that count whole units only.
INTEGRAL_SLOTS = frozenset({"cuda.device"})


_ZERO = Decimal(0)


class ResourceSlot(dict[str, Decimal]):
    """A mapping of slot name to Decimal amount with element-wise arithmetic."""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> ResourceSlot:
        return cls({k: Decimal(str(v)) for k, v in (obj or {}).items()})

    def to_json(self) -> dict[str, str]:
        return {k: _fmt_decimal(v) for k, v in sorted(self.items())}

    def __add__(self, other: Mapping[str, Decimal]) -> ResourceSlot:  # type: ignore[override]
        keys = set(self) | set(other)
        return ResourceSlot({k: self.get(k, Decimal(0)) + other.get(k, Decimal(0)) for k in keys})

    def __sub__(self, other: Mapping[str, Decimal]) -> ResourceSlot:
        keys = set(self) | set(other)
        return ResourceSlot({k: self.get(k, Decimal(0)) - other.get(k, Decimal(0)) for k in keys})

    def fits_in(self, capacity: Mapping[str, Decimal]) -> bool:
        """True when every requested slot is at most what ``capacity`` holds."""
        return all(v <= capacity.get(k, Decimal(0)) for k, v in self.items() if v > 0)

    def shortfall(self, capacity: Mapping[str, Decimal]) -> dict[str, tuple[Decimal, Decimal]]:
        """Slots that do not fit: ``{name: (requested, available)}``."""
        return {
            k: (v, capacity.get(k, Decimal(0)))
            for k, v in self.items()
            if v > 0 and v > capacity.get(k, Decimal(0))
        }

    def nonzero(self) -> ResourceSlot:
        return ResourceSlot({k: v for k, v in self.items() if v != 0})

    def is_nonnegative(self) -> bool:
        return all(v >= 0 for v in self.values())

    @classmethod
    def total(cls, slots: Iterable[Mapping[str, Decimal]]) -> ResourceSlot:
        """The element-wise sum (every key of any of ``slots``), in one dict: an agent sums
        its live kernels' slots at each kernel's start and end."""
        acc: dict[str, Decimal] = {}
        for s in slots:
            for k, v in s.items():
                acc[k] = acc.get(k, _ZERO) + v
        return cls(acc)


def _fmt_decimal(v: Decimal) -> str:
    if v == v.to_integral_value():
        return str(v.quantize(Decimal(1)))
    return format(v.normalize(), "f")


def parse_size(text: str | int | float | Decimal) -> Decimal:
    """``"8g"`` -> 8589934592. Raises ValueError on anything else."""
    if isinstance(text, (int, Decimal)):
        if text < 0:
            raise ValueError(f"negative size: {text}")
        return Decimal(text)
    if isinstance(text, float):
        text = repr(text)
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r}")
    num, suffix = m.groups()
    return (Decimal(num) * _BINARY_SUFFIX[suffix.lower()]).to_integral_value()


def format_size(n: Decimal | int) -> str:
    """8589934592 -> ``8g``; keeps one decimal where needed (``1.5g``)."""
    n = Decimal(n)
    for suffix in ("t", "g", "m", "k"):
        unit = _BINARY_SUFFIX[suffix]
        if n >= unit:
            q = n / unit
            return f"{_fmt_decimal(q.quantize(Decimal('0.1')).normalize())}{suffix}"
    return str(int(n))


#: no slot amount is larger (2^63 - 1: bytes of memory fit 64-bit integers, and decimal
#: arithmetic at 28 digits stays exact)
MAX_AMOUNT = Decimal(2**63 - 1)


def parse_amount(slot: str, value: Any) -> Decimal:
    """Parse one slot amount as a user wrote it; raises InvalidResourceSpec naming the slot."""
    try:
        if slot == "mem" or slot.endswith(".mem"):
            amount = parse_size(value)
        else:
            amount = Decimal(str(value).strip())
            if not amount.is_finite():
                raise InvalidOperation
    except (ValueError, InvalidOperation):
        raise InvalidResourceSpec(
            f"invalid value for resource {slot!r}: {value!r}"
            + (" (use a size such as 512m or 8g)" if slot == "mem" else " (use a number)"),
            data={"slot": slot, "value": str(value)},
        ) from None
    if amount < 0:
        raise InvalidResourceSpec(
            f"invalid value for resource {slot!r}: {value!r} (must not be negative)",
            data={"slot": slot, "value": str(value)},
        )
    if amount > MAX_AMOUNT:
        raise InvalidResourceSpec(
            f"invalid value for resource {slot!r}: {value!r} (more than any machine has)",
            data={"slot": slot, "value": str(value)},
        )
    if slot in INTEGRAL_SLOTS and amount != amount.to_integral_value():
        raise InvalidResourceSpec(
            f"invalid value for resource {slot!r}: {value!r} (whole devices only)",
            data={"slot": slot, "value": str(value)},
        )
    return amount


_SLOT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)?$")


def parse_request(raw: Mapping[str, Any] | None) -> ResourceSlot:
    """Turn a request such as ``{"cpu": "4", "mem": "8g"}`` into slots."""
    out = ResourceSlot()
    for key, value in (raw or {}).items():
        slot = str(key).strip().lower()
        if not _SLOT_NAME_RE.match(slot):
            raise InvalidResourceSpec(
                f"invalid resource name {key!r}", data={"slot": str(key)}
            )
        out[slot] = parse_amount(slot, value)
    return out


def check_session_request(slots: Mapping[str, Decimal],
                          known: Iterable[str] | None = KNOWN_SLOTS) -> None:
    """A session's request: each amount above zero (a slot left out gets its default) and,
    unless ``known`` is None, each slot one of ``known`` (plus KNOWN_SLOTS). The
    InvalidResourceSpec lists the known slot names."""
    names = list(KNOWN_SLOTS) + sorted(set(known or ()) - set(KNOWN_SLOTS))
    listed = ", ".join(names)
    for slot, amount in slots.items():
        if known is not None and slot not in names:
            raise InvalidResourceSpec(
                f"unknown resource slot {slot!r}; known slots: {listed}",
                data={"slot": slot, "known": names},
            )
        if amount <= 0:
            raise InvalidResourceSpec(
                f"resource {slot!r} must be above zero (leave it out for the default);"
                f" known slots: {listed}",
                data={"slot": slot, "value": str(amount), "known": names},
            )


def humanize_slots(slots: Mapping[str, Decimal]) -> str:
    """``cpu:1, mem:1g`` as shown in tables."""
    parts = []
    for k, v in sorted(slots.items()):
        parts.append(f"{k}:{format_size(v) if k == 'mem' else _fmt_decimal(Decimal(v))}")
    return ", ".join(parts)
