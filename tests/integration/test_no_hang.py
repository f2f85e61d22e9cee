"""Nodes and commands never hang, and always stop, when the broker stops answering.

The broker is made unreachable without touching the shared RabbitMQ: a network's config points
at the battery's TCP fault proxy (``tests/battery/proxy.py``), which black-holes (connections
are accepted, nothing ever comes back: a broker at its open-file limit) or refuses (a broker
that is down). Every command ends with one line that says what it waited for and what to check,
never a traceback; a node retries its broker with backoff and says so in its log, its
lifecycle file and ``mlanet status``; SIGTERM stops a node in every phase, losing nothing; the
demo's readiness check names a node that fails, and its log file.

Deadlines here are for hangs (a command or node that never ends), not timings: each is several
times what the behaviour needs.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.local.federation import Federation, NodeFailed, NodeProcesses, teardown
from mlanet.nodes.runtime.lifecycle import Lifecycle, Phase
from mlanet.nodes.state.store import open_node_store
from mlanet.schemas.submission import Submission
from tests.battery.faults import tune
from tests.battery.proxy import FaultProxy
from tests.integration.kit import ADMIN, config, credentials, eventually

HANG = 60.0  # seconds after which a command or a node that has not ended is hung


@dataclass
class Ended:
    code: int
    out: str
    err: str


async def _mlanet(*args: str, interrupt_when: FaultProxy | None = None) -> Ended:
    """Run the real ``mlanet`` entry point; with ``interrupt_when``, send it SIGINT once it
    has connected to that proxy (it is waiting for the broker)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if interrupt_when is not None:
            await eventually(_connected(interrupt_when), within=HANG)
            process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), HANG)
    finally:
        if process.returncode is None:  # hung: leave nothing behind, and fail
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ended(process.returncode, out.decode(), err.decode())


def _kh(fed: Federation) -> str:
    """kh-cp-1's credentials folder (what send takes)."""
    return str(fed.credentials("kh-cp-1"))


def _uz(fed: Federation) -> str:
    return str(fed.credentials("uz-cp-1"))


def _connected(proxy: FaultProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return proxy.accepted > 0

    return check


def _one_line(ended: Ended) -> str:
    lines = ended.err.splitlines()
    assert len(lines) == 1, ended.err
    assert "Traceback" not in ended.err
    assert "CancelledError" not in ended.err
    return lines[0]


@pytest.fixture
def blackhole() -> Iterator[FaultProxy]:
    """A broker address that accepts connections and never answers."""
    with FaultProxy("127.0.0.1", 5672, name="blackhole") as proxy:
        proxy.blackhole()
        yield proxy


@pytest.fixture
def refusing() -> Iterator[FaultProxy]:
    """A broker that is down (connections reset) until ``heal()``."""
    with FaultProxy("127.0.0.1", 5672, name="refusing") as proxy:
        proxy.cut()
        yield proxy


def _request(n: int) -> Submission:
    return facilitation_request(
        "kh-cp-1",
        "UZ",
        case_ref=f"KH-MLA-2026-{n:04d}",
        summary="Test request: no real case content.",
        offences=("cybercrime",),
        measures=("e_evidence_preservation",),
    )


# --- commands ------------------------------------------------------------------------------------
async def test_commands_give_up_on_a_black_holed_broker_with_one_line(
    fed: Federation, blackhole: FaultProxy
) -> None:
    """send, inbox and directory membership, against a broker that accepts connections and never
    answers, each end after their connect timeout with one line naming the broker's address
    and what to check (no 7-minute hang, no traceback); with a --timeout shorter than that, the
    command's own time limit ends it, with one line naming the command."""
    for network in ("seajust", "casc", "unodc"):
        tune(fed, network, port=blackhole.port)
    seajust, casc, unodc = (str(fed.config_path(n)) for n in ("seajust", "casc", "unodc"))
    send, inbox, membership, limited = await asyncio.gather(
        _mlanet(
            "send", "--config", seajust, "--credentials", _kh(fed), "--to-country", "UZ",
            "--case-ref", "KH-MLA-2026-0001", "--summary", "no case content",
        ),
        _mlanet("inbox", "--config", casc, "--credentials", _uz(fed)),
        _mlanet(
            "directory", "membership", "--config", unodc, "--network", "casc",
            "--add-observer", "MN",
        ),
        _mlanet("inbox", "--config", casc, "--credentials", _uz(fed), "--timeout", "3"),
    )  # fmt: skip
    where = f"127.0.0.1:{blackhole.port}"
    unreachable = (
        f"cannot reach the broker at {where}: no answer within 10 s; check that "
        "RabbitMQ runs there and accepts connections (its log, its open-file limit)"
    )
    for ended in (send, inbox):
        assert ended.code == 1
        assert _one_line(ended) == f"mlanet: {unreachable}"
    # the directory command also says that the version it signed is not used up (PROTOCOL 14.6)
    assert membership.code == 1
    assert _one_line(membership) == (
        f"mlanet: version 2 was not published ({unreachable}): nothing was used up, the next "
        "directory command signs version 2 again"
    )
    assert limited.code == 124
    assert _one_line(limited) == (
        f"mlanet: inbox gave up after 3 s waiting for the broker at {where}; check that "
        "RabbitMQ runs there and accepts connections (its log, its open-file limit)"
    )


async def test_commands_on_a_broker_that_is_down_end_at_once_with_one_line(
    fed: Federation, refusing: FaultProxy
) -> None:
    """A broker that refuses connections (down): send ends with one line saying so."""
    tune(fed, "seajust", port=refusing.port)
    ended = await _mlanet(
        "send", "--config", str(fed.config_path("seajust")), "--credentials", _kh(fed),
        "--to-country", "UZ", "--case-ref", "KH-MLA-2026-0002", "--summary", "no case content",
    )  # fmt: skip
    assert ended.code == 1
    line = _one_line(ended)
    assert line.startswith(f"mlanet: cannot reach the broker at 127.0.0.1:{refusing.port}: ")
    assert line.endswith(
        "; check that RabbitMQ runs there and accepts connections (its log, its open-file limit)"
    )


async def test_ctrl_c_on_a_command_waiting_for_the_broker_is_one_line(
    fed: Federation, blackhole: FaultProxy
) -> None:
    """SIGINT while send waits for a silent broker: one line and exit code 130, not a
    100-line CancelledError traceback."""
    tune(fed, "seajust", port=blackhole.port)
    ended = await _mlanet(
        "send", "--config", str(fed.config_path("seajust")), "--credentials", _kh(fed),
        "--to-country", "UZ", "--case-ref", "KH-MLA-2026-0003", "--summary", "no case content",
        interrupt_when=blackhole,
    )  # fmt: skip
    assert ended.code == 130
    assert _one_line(ended) == "mlanet: interrupted; what the command was doing may be unfinished"


async def test_federation_init_gives_up_on_a_black_holed_management_api(tmp_path: Path) -> None:
    """The management API accepts connections and never answers: federation init ends with one
    line naming the API's address and what to check."""
    prefix = "h" + uuid.uuid4().hex[:10]
    folder = tmp_path / "federation"
    with FaultProxy("127.0.0.1", 15672, name="management") as proxy:
        proxy.blackhole()
        try:
            ended = await _mlanet(
                "federation", "init", "--dir", str(folder), "--prefix", prefix,
                "--management-url", f"http://127.0.0.1:{proxy.port}", "--operator-port", "0",
            )  # fmt: skip
        finally:
            proxy.close()  # what it held is dropped, never sent on
            fed = Federation(folder, prefix, ("seajust",), ())
            await teardown(fed, ADMIN)  # nothing should be there; removed if it is
    assert ended.code == 1
    assert _one_line(ended) == (
        f"mlanet: the management API at 127.0.0.1:{proxy.port} did not answer within 10 s; "
        "check that RabbitMQ runs there with its management plugin"
    )


# --- nodes ---------------------------------------------------------------------------------------
def _log_events(processes: NodeProcesses, network: str) -> list[dict[str, object]]:
    """Every line of the node's log, each one JSON (a traceback would fail here)."""
    lines = processes.log_path(network).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def _phase(
    processes: NodeProcesses, network: str, phase: Phase, **at_least: int
) -> Lifecycle:
    """Wait until the node process says it is in ``phase`` (e.g. with attempt >= n)."""
    found: list[Lifecycle] = []

    async def reached() -> bool:
        processes.check_running([network])
        state = processes.lifecycle(network)
        if state is None or state.phase is not phase:
            return False
        if any(getattr(state, field) < value for field, value in at_least.items()):
            return False
        found.append(state)
        return True

    await eventually(reached, within=HANG)
    return found[-1]


def _terminate(processes: NodeProcesses, network: str, sig: int = signal.SIGTERM) -> int:
    """Send ``sig``; the exit code (the node must stop on its own: a hang fails the test)."""
    process = processes.processes[network]
    process.send_signal(sig)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"node {network} did not stop on {signal.Signals(sig).name}") from None


async def test_a_node_retries_a_broker_that_is_down_says_so_and_starts_when_it_is_back(
    fed: Federation, refusing: FaultProxy
) -> None:
    """The node does not exit at start: it retries with backoff, logging each attempt as
    JSON, writing its phase, and mlanet status names it; the demo's readiness check names the
    node, its phase and its log; once the broker answers, the node starts."""
    tune(fed, "seajust", port=refusing.port)
    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start("seajust")
        state = await _phase(processes, "seajust", Phase.RETRYING, attempt=2)
        assert state.error is not None
        assert f"cannot reach the broker at 127.0.0.1:{refusing.port}" in state.error

        # between two attempts, or in one: either way the phase, the attempt and the error
        doing = (
            r"\((retrying|starting) since [0-9:]{8} \(attempt \d+[^)]*\): cannot reach the "
            f"broker at 127.0.0.1:{refusing.port}"
        )
        with pytest.raises(NodeFailed) as failed:
            await processes.wait_ready(["seajust"], within=2)
        assert re.match(f"node seajust did not start within 2 s {doing}", str(failed.value))
        assert str(failed.value).endswith(f"see {processes.log_path('seajust')}")

        status = await _mlanet("status", "--config", str(fed.config_path("seajust")))
        pid = processes.processes["seajust"].pid
        assert re.search(f"node process {pid}: {doing[2:]}", status.out + status.err)
        assert "Traceback" not in status.err

        refusing.heal()
        await processes.wait_ready(["seajust"], within=HANG)
        assert _terminate(processes, "seajust") == 0
        events = _log_events(processes, "seajust")
        retries = [e for e in events if e["event"] == "node_start_retrying"]
        assert [e["attempt"] for e in retries[:2]] == [1, 2]
        assert all(isinstance(e["retry_in"], float) for e in retries)
        assert [e["event"] for e in events if e["event"] in ("node_started", "node_stopped")] == [
            "node_started",
            "node_stopped",
        ]
    finally:
        processes.stop_all()


@pytest.mark.parametrize("phase", ["starting", "retrying", "running", "draining"])
async def test_sigterm_stops_a_node_in_every_phase(
    fed: Federation, phase: str, blackhole: FaultProxy
) -> None:
    """SIGTERM stops the node cleanly (exit 0, lifecycle 'stopped', JSON log only) while it
    waits for a silent broker (starting), between attempts (retrying), while it runs, and
    when its broker goes silent under it (draining, then closing, without an answer)."""
    processes = NodeProcesses(fed, ADMIN)
    if phase == "starting":
        tune(fed, "casc", port=blackhole.port)
    elif phase == "retrying":
        tune(fed, "casc", port=blackhole.port)
        blackhole.cut()
    else:
        blackhole.heal()
        tune(fed, "casc", port=blackhole.port)
    try:
        processes.start("casc")
        if phase == "starting":
            await eventually(_connected(blackhole), within=HANG)
            await _phase(processes, "casc", Phase.STARTING)
        elif phase == "retrying":
            await _phase(processes, "casc", Phase.RETRYING, attempt=1)
        else:
            await processes.wait_ready(["casc"], within=HANG)
            if phase == "draining":
                blackhole.blackhole()
        assert _terminate(processes, "casc") == 0
        state = processes.lifecycle("casc")
        assert state is not None
        assert state.phase is Phase.STOPPED
        events = [e["event"] for e in _log_events(processes, "casc")]
        assert events[-1] == "node_stopped"
        if phase in ("running", "draining"):
            assert "node_stopping" in events
        with pytest.raises(NodeFailed, match=r"^node casc exited with code 0 \(stopped since "):
            processes.check_running()  # what the demo says of a node that has gone
    finally:
        processes.stop_all()


async def _receipted(fed: Federation, ids: list[str]) -> bool:
    store = open_node_store(config(fed, "seajust"))
    try:
        return all(
            (entry := store.outbox_get(message_id)) is not None and entry.state == "delivered"
            for message_id in ids
        )
    finally:
        store.close()


async def test_sigterm_mid_stream_loses_nothing_and_delivers_nothing_twice(
    fed: Federation,
) -> None:
    """CASC's node is stopped with SIGTERM while requests stream in, then started again: it
    stops on its own (exit 0), and every request reaches uz-cp-1 exactly once with its
    receipt back at SEAJust."""
    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start("seajust")
        processes.start("casc")
        await processes.wait_ready(within=HANG)
        ids = []
        for n in range(80):
            request = _request(n)
            await submit(config(fed, "seajust"), credentials(fed, request.sender), request)
            ids.append(request.message_id)
            if n == 40:
                assert _terminate(processes, "casc") == 0
                processes.start("casc")
        await processes.wait_ready(["casc"], within=HANG)
        await eventually(lambda: _receipted(fed, ids), within=120)
        items = await read_inbox(config(fed, "casc"), credentials(fed, "uz-cp-1"))
        delivered = [item.message.header.message_id for item in items]
        assert sorted(delivered) == sorted(ids)
        events = [e["event"] for e in _log_events(processes, "casc")]
        assert events.count("node_started") == 2
        assert "node_stopping" in events
    finally:
        processes.stop_all()


async def test_wait_ready_names_a_node_that_fails_at_start_and_its_log(fed: Federation) -> None:
    """A node that cannot start (a misspelt crash point stops it at once) is named with its
    exit code and log file; its log says what to fix in one line, without a traceback."""
    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start("casc", {"MLANET_CRASH_AT": "no_such_point:1"})
        with pytest.raises(NodeFailed) as failed:
            await processes.wait_ready(["casc"], within=HANG)
        assert str(failed.value).startswith("node casc exited with code 1")
        assert str(failed.value).endswith(f"see {processes.log_path('casc')}")
        logged = processes.log_path("casc").read_text(encoding="utf-8").splitlines()
        assert len(logged) == 1
        assert logged[0].startswith("mlanet: ")
        assert "no_such_point" in logged[0]
    finally:
        processes.stop_all()
