"""The runtime-backend contract (bai.agent.backends.base): every backend passes these."""

from __future__ import annotations

import asyncio
import json

import pytest

from bai.agent.backends.base import InstanceState, KernelCreationFailed
from bai.agent.transfer import write_file
from bai.common.errors import KernelNotFound
from bai.testing.contract import Harness, run


async def _chunks(data: bytes):
    yield data


async def test_create_execute_and_state_persists(harness: Harness) -> None:
    backend = await harness.make()
    spec = harness.spec()
    await backend.ensure_image(spec)
    inst = await backend.create(spec)
    assert inst.state == InstanceState.RUNNING
    assert inst.kernel_id == spec.kernel_id and inst.session_id == spec.session_id
    again = await backend.create(spec)  # idempotent on kernel_id
    assert again.kernel_id == inst.kernel_id and again.container_id == inst.container_id

    channel = await backend.open_channel(inst)
    try:
        out, _, code, _ = await run(channel, {"mode": "query", "code": "x = 6 * 7\nprint(x)"})
        assert code == 0
        assert out == ("42\n" if harness.real_code else "x = 6 * 7\nprint(x)\n")
        out, _, code, _ = await run(channel, {"mode": "query", "code": "print(x + 1)"})
        assert code == 0
        assert out == ("43\n" if harness.real_code else "print(x + 1)\n")
    finally:
        await channel.close()


async def test_upload_then_batch_exec(harness: Harness) -> None:
    backend = await harness.make()
    inst = await backend.create(harness.spec())
    inst.workdir.mkdir(parents=True, exist_ok=True)
    name = await write_file(inst.workdir, "pkg/main.py",
                            _chunks(b"import sys\nprint('args', *sys.argv[1:])\n"))
    assert name == "pkg/main.py"
    channel = await backend.open_channel(inst)
    try:
        out, _, code, frames = await run(channel, {
            "mode": "batch", "options": {"clean": "*", "build": "*", "exec": "python pkg/main.py a b"},
            "uploaded": [name]})
        assert code == 0
        assert frames[-1]["status"] == "finished"
        assert out == ("args a b\n" if harness.real_code else "exec: python pkg/main.py a b\n")
        out, _, code, _ = await run(channel, {
            "mode": "batch", "options": {"clean": "*", "build": "*", "exec": "*"},
            "uploaded": [name]})
        assert code == 0
        assert out == ("args\n" if harness.real_code else "exec: pkg/main.py\n")
    finally:
        await channel.close()


async def test_destroy_is_idempotent_and_removes_everything(harness: Harness) -> None:
    backend = await harness.make()
    spec = harness.spec()
    inst = await backend.create(spec)
    gone = await backend.destroy(spec.kernel_id)
    assert gone is not None and gone.state == InstanceState.EXITED
    assert await backend.destroy(spec.kernel_id) is None
    assert await backend.destroy("never-existed") is None
    with pytest.raises(KernelNotFound):
        await backend.inspect(spec.kernel_id)
    assert spec.kernel_id not in {i.kernel_id for i in await backend.list()}
    assert not inst.workdir.exists()


async def test_list_from_labels_after_a_fresh_backend_object(harness: Harness) -> None:
    first = await harness.make()
    spec = harness.spec(environ={"GREETING": "hello"})
    await first.create(spec)
    await first.stop()

    second = await harness.make()
    found = {i.kernel_id: i for i in await second.list()}
    assert spec.kernel_id in found
    inst = found[spec.kernel_id]
    assert inst.state == InstanceState.RUNNING
    assert inst.session_id == spec.session_id
    assert json.loads(inst.labels["bai.spec"])["slots"]["mem"] == str(spec.slots["mem"])
    # the kernel is still usable through the new backend object
    channel = await second.open_channel(inst)
    try:
        code_text = "import os; print(os.environ['GREETING'])"
        out, _, code, _ = await run(channel, {"mode": "query", "code": code_text})
        assert code == 0
        assert out == ("hello\n" if harness.real_code else code_text + "\n")
    finally:
        await channel.close()
    assert (await second.destroy(spec.kernel_id)) is not None


async def test_creation_failure_is_a_readable_error(harness: Harness) -> None:
    backend = await harness.make()
    spec = harness.failing_spec()
    with pytest.raises(KernelCreationFailed) as err:
        await backend.ensure_image(spec)
        await backend.create(spec)
    assert "missing" in str(err.value) or "/nonexistent" in str(err.value)
    assert spec.kernel_id not in {i.kernel_id for i in await backend.list()}


async def test_startup_command_exit_is_reported(harness: Harness) -> None:
    backend = await harness.make()
    spec = harness.spec(session_type="BATCH", startup_command="exit 3")
    await backend.create(spec)
    for _ in range(100):
        if any(i.kernel_id == spec.kernel_id for i in harness.exits):
            break
        await asyncio.sleep(0.05)
    exited = [i for i in harness.exits if i.kernel_id == spec.kernel_id]
    assert len(exited) == 1
    assert exited[0].exit_code == 3
    assert exited[0].exit_reason == "self-terminated"


async def test_stats_and_logs(harness: Harness) -> None:
    backend = await harness.make()
    spec = harness.spec()
    await backend.create(spec)
    stats = await backend.stats(spec.kernel_id)
    assert isinstance(stats.get("cpu_used"), int) and stats["cpu_used"] >= 0
    assert isinstance(stats.get("mem_max_bytes"), int)
    assert isinstance(await backend.logs(spec.kernel_id), str)
    with pytest.raises(KernelNotFound):
        await backend.stats("never-existed")
