"""Pure parts of the dashboard: password hashes, the plots' series (the login limiter is in the
database: tests/integration/test_login_limiter.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bai.common.errors import InvalidAPIParameters
from bai.manager.services import passwords
from bai.manager.services.cluster_history import series


def test_a_hash_verifies_its_password_only_and_is_salted():
    h1, h2 = passwords.hash_password("correct horse"), passwords.hash_password("correct horse")
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$")
    assert passwords.verify_password("correct horse", h1)
    assert not passwords.verify_password("correct horsE", h1)
    assert not passwords.verify_password("correct horse", None)
    assert not passwords.verify_password("correct horse", "scrypt$bad")
    assert not passwords.verify_password("correct horse", "md5$1$2$3$4$5")
    assert not passwords.verify_password("x" * 5000, h1)


@pytest.mark.parametrize("bad", ["", "short", "x" * 1025, None, 12345678])
def test_a_new_password_is_checked(bad):
    with pytest.raises(InvalidAPIParameters):
        passwords.check_new(bad)


def test_series_counts_the_queue_and_what_running_sessions_held():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    end = start + timedelta(hours=4)
    at = lambda h: start + timedelta(hours=h)  # noqa: E731
    rows = [
        # waited from 0.5 h to 1.5 h, then held 2 cpus until 3.5 h
        {"created_at": at(0.5), "scheduled_at": at(1.5), "terminated_at": at(3.5),
         "requested_slots": {"cpu": "2", "mem": "1024"}},
        # still waiting
        {"created_at": at(2.5), "scheduled_at": None, "terminated_at": None,
         "requested_slots": {"cpu": "4"}},
        # cancelled while waiting, at 1.2 h
        {"created_at": at(0.2), "scheduled_at": None, "terminated_at": at(1.2),
         "requested_slots": {"cpu": "1"}},
    ]
    got = series(rows, {"cpu": Decimal(4), "mem": Decimal(4096)}, start, end, buckets=4)
    # sample times: 1 h, 2 h, 3 h, 4 h
    assert got["queue"] == [2, 0, 1, 1]
    assert got["utilisation"]["cpu"] == [0.0, 0.5, 0.5, 0.0]
    assert got["utilisation"]["mem"] == [0.0, 0.25, 0.25, 0.0]
    assert len(got["times"]) == 4 and got["capacity"] == {"cpu": "4", "mem": "4096"}
