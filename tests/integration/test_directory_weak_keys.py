"""A signed directory carrying a weak or malformed key must not brick the nodes that receive it
(security review: "No member network can act as another").

Each attack is a directory signed with the coordinator's real key that lists the identity point,
a point of order 8 or a non-canonical encoding, as a network key or as the coordinator's key. It
arrives over the federation (a peer's ``directory_update``) or through ``mlanet directory
publish``. Every time: refused with its reason (``weak_key`` / ``malformed_key``), quarantined,
settled once (no requeue loop), nothing persisted, nothing passed on; the node keeps running,
starts again, and ``mlanet directory show`` and ``mlanet status`` answer. A node whose state file
already holds such a directory (an older version wrote it) starts on its last good one and says
so in one log line. Everything runs against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from mlanet.broker import sign_message
from mlanet.broker.keys import load_signing_key
from mlanet.broker.management import Management
from mlanet.broker.strictjson import canonical_bytes
from mlanet.broker.transport import Incoming, Transport
from mlanet.nodes.directory.book import PREVIOUS_FILE, REFUSED_FILE, STATE_FILE, DirectoryBook
from mlanet.nodes.directory.coordinator import publish_directory
from mlanet.nodes.directory.keeper import DIRECTORY_QUEUE
from mlanet.nodes.local.federation import Federation, NodeProcesses
from mlanet.schemas import Destination, DirectoryUpdate, Header, Origin
from mlanet.schemas.directory import SignedDirectory
from tests.integration.directory_kit import all_hold, dfed, held_version, mlanet, quarantine_depth
from tests.integration.kit import (
    ADMIN,
    Drained,
    amqp,
    config,
    depth,
    drain,
    eventually,
    inject,
    key,
    running,
)
from tests.weak_directories import (
    ATTACKS,
    Attack,
    sign_anyway,
    with_coordinator_key,
    with_network_key,
)

__all__ = ["dfed"]

# Several waits on a busy shared broker: more than the default per-test timeout.
pytestmark = pytest.mark.timeout(300)

REQUEUED = {"transient_failure_requeued", "unexpected_failure_requeued"}


def _forgeries(fed: Federation) -> list[tuple[str, Attack, bytes]]:
    """(role, attack, signed bytes): each attack as SEAJust's key and as the coordinator's,
    newer than version 1, signed with the coordinator's own key."""
    base = DirectoryBook.load(config(fed, "seajust"), persist=False).held.directory
    signer = load_signing_key(fed.coordinator_key())
    now = datetime.now(UTC)
    made: list[tuple[str, Attack, bytes]] = []
    for number, attack in enumerate(ATTACKS):
        version = 2 + 2 * number
        network = with_network_key(base, "seajust", attack, version, now)
        made.append(("network seajust", attack, sign_anyway(network, signer)))
        coordinator = with_coordinator_key(base, attack, version + 1, now)
        made.append(("coordinator unodc", attack, sign_anyway(coordinator, signer)))
    return made


def _expected(forgeries: list[tuple[str, Attack, bytes]]) -> Counter[tuple[str, str]]:
    return Counter((attack.reason.value, role) for role, attack, _ in forgeries)


def _update(fed: Federation, sender: str, receiver: str, data: bytes) -> bytes:
    """A directory_update that peer ``sender`` hands ``receiver``, signed by the sender."""
    header = Header(
        kind="directory_update",
        message_id=str(uuid.uuid4()),
        origin=Origin(network=sender),
        destination=Destination(network=receiver),
        created_at=datetime.now(UTC),
        key_id="ed25519:1",
    )
    payload = DirectoryUpdate(directory=SignedDirectory.model_validate_json(data))
    return sign_message(header, payload, key(fed, sender)).to_bytes()


async def _settled(fed: Federation, network: str, queue: str, *, door: str | None = None) -> None:
    """Wait until ``queue`` (in the door of ``network``'s peer ``door``) holds nothing, ready or
    unacknowledged (the broker's own count)."""
    vhost = fed.vhost(network) if door is None else fed.door(network, door)

    async def empty() -> bool:
        async with Management(ADMIN) as management:
            for found in await management.queues(vhost):
                if found["name"] == queue:
                    return found.get("messages") == 0
        return False

    await eventually(empty, within=60, every=0.5)


async def _taken(fed: Federation, network: str, count: int) -> Counter[tuple[str, str]]:
    """Wait for ``count`` quarantined messages, take them: (reason, whose key) of each."""

    async def arrived() -> bool:
        return await quarantine_depth(fed, network) >= count

    await eventually(arrived, within=90)
    found = Counter[tuple[str, str]]()
    for entry in await drain(fed, network, "mlanet.quarantine"):
        detail = str(entry.headers["x-mlanet-detail"])
        found[(str(entry.headers["x-mlanet-reason"]), detail.split(" key ")[0])] += 1
    return found


def _state(fed: Federation, network: str) -> Path:
    return config(fed, network).state_dir


async def _cli(*args: str | Path) -> tuple[int, str, str]:
    """Run ``mlanet`` as an operator types it: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlanet",
        *(str(arg) for arg in args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _still_answers(fed: Federation, network: str, version: int) -> None:
    """``mlanet directory show`` and ``mlanet status`` answer, on ``version``."""
    shown = await mlanet("directory", "show", "--config", fed.config_path(network))
    assert shown.output.startswith(f"directory version {version}, ")
    code, out, err = await _cli("status", "--config", fed.config_path(network), "--json")
    assert code in (0, 1, 3), err
    assert json.loads(out)["expiry"]["directory_version"] == version


def _events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_weak_keys_in_an_update_from_a_peer_are_refused_and_nothing_follows(
    dfed: Federation,
) -> None:
    """SEAJust hands CASC each forgery (and one directory with an empty signature) as a
    ``directory_update``: each quarantined once with its reason, the peer inbox settled."""
    fed = dfed
    forgeries = _forgeries(fed)
    # and one whose signature is empty: unsigned_directory, not schema_invalid
    held = DirectoryBook.load(config(fed, "seajust"), persist=False).held.signed
    unsigned = canonical_bytes(held.model_copy(update={"signature": ""}).model_dump(mode="json"))
    expected = _expected(forgeries) + Counter(
        {("unsigned_directory", "the directory carries no signature"): 1}
    )
    with capture_logs() as logs:
        async with running(fed, "unodc", "seajust", "casc") as nodes:
            before = (_state(fed, "casc") / STATE_FILE).read_bytes()
            for data in [*(data for _, _, data in forgeries), unsigned]:
                await inject(fed, "casc", "seajust", _update(fed, "seajust", "casc", data))

            assert await _taken(fed, "casc", len(forgeries) + 1) == expected
            await _settled(fed, "casc", "mlanet.inbox.seajust", door="seajust")
            assert not _events(logs, "directory_applied")
            assert {e["version"] for e in _events(logs, "directory_passed_on")} == {1}
            assert not [e for e in logs if e["event"] in REQUEUED]
            assert (_state(fed, "casc") / STATE_FILE).read_bytes() == before
            assert not (_state(fed, "casc") / PREVIOUS_FILE).exists()
            assert nodes.tasks["casc"].done() is False
            await _still_answers(fed, "casc", 1)

            # Still follows the real coordinator, and starts again on what it holds.
            await mlanet("directory", "renew", "--config", fed.config_path("unodc"))
            await all_hold(fed, 2, ("unodc", "seajust", "casc"))
            await nodes.stop("casc")
            await nodes.start("casc")
            assert nodes.nodes["casc"].keeper.book.version == 2
    assert await quarantine_depth(fed, "casc") == 0
    await _still_answers(fed, "casc", 2)


async def test_mlanet_directory_publish_refuses_them_and_a_node_quarantines_them_anyway(
    dfed: Federation, tmp_path: Path
) -> None:
    fed = dfed
    forgeries = _forgeries(fed)
    async with running(fed, "unodc", "seajust"):
        pass  # SEAJust's queues exist; its node is stopped: what reaches its queue stays there
    queue_before = await depth(fed, "seajust", DIRECTORY_QUEUE)
    for number, (role, attack, data) in enumerate(forgeries):
        path = tmp_path / f"directory-{number}.json"
        path.write_bytes(data)
        code, out, err = await _cli(
            "directory", "publish", path, "--config", fed.config_path("seajust")
        )
        assert (code, out) == (1, "")
        assert err.splitlines() == [err.rstrip("\n")]  # one line
        assert err.startswith(
            f"mlanet: refused, nothing published: {attack.reason.value}: {role} key ed25519:1: "
        )
    assert await depth(fed, "seajust", DIRECTORY_QUEUE) == queue_before == 0

    # Published all the same (an older mlanet, or any local publisher): quarantined.
    for _, _, data in forgeries:
        await publish_directory(config(fed, "seajust"), data)
    assert await depth(fed, "seajust", DIRECTORY_QUEUE) == len(forgeries)
    before = (_state(fed, "seajust") / STATE_FILE).read_bytes()
    with capture_logs() as logs:
        async with running(fed, "unodc", "seajust", "casc") as nodes:
            assert await _taken(fed, "seajust", len(forgeries)) == _expected(forgeries)
            await _settled(fed, "seajust", DIRECTORY_QUEUE)
            assert not [e for e in logs if e["event"] in REQUEUED]
            assert not _events(logs, "directory_applied")
            assert {e["version"] for e in _events(logs, "directory_passed_on")} == {1}
            quarantined = _events(logs, "message_quarantined")
            assert {e["via"] for e in quarantined} == {DIRECTORY_QUEUE}
            assert len(quarantined) == len(forgeries)  # each once: never round again
            assert (_state(fed, "seajust") / STATE_FILE).read_bytes() == before
            for network in ("unodc", "seajust", "casc"):
                assert held_version(fed, network) == 1
            await _still_answers(fed, "seajust", 1)
            await nodes.stop("seajust")
            await nodes.start("seajust")
            assert nodes.nodes["seajust"].keeper.book.version == 1


async def test_the_directory_queue_has_a_delivery_limit(dfed: Federation) -> None:
    """What the node consumes is bounded: ``mlanet.directory`` dead-letters a message that keeps
    failing to quarantine after ``delivery_limit`` deliveries, as ``mlanet.submit`` does. (A
    peer's inbox queue, in its door, has no quarantine to dead-letter into: the node counts its
    deliveries itself, test_quarantine.py. The peer link queues, ``mlanet.out.<peer>``, are
    drained by shovels, not by the node, and stay unbounded: a full peer inbox hands messages
    back to them, which is flow control, not poison.)"""
    fed = dfed
    async with running(fed, "seajust"), Management(ADMIN) as management:
        queues = {q["name"]: q for q in await management.queues(fed.vhost("seajust"))}
    limit = config(fed, "seajust").limits.delivery_limit
    for name in (DIRECTORY_QUEUE, "mlanet.submit", "mlanet.inbox"):
        arguments = queues[name]["arguments"]
        assert arguments["x-delivery-limit"] == limit, name
        assert arguments["x-dead-letter-exchange"] == "mlanet.unroutable", name

    # A consumer that fails on every delivery (as the node did on such a directory) and
    # requeues: the broker ends it in quarantine; it does not go round for ever.
    deliveries = 0

    async def failing(incoming: Incoming) -> None:
        nonlocal deliveries
        deliveries += 1
        await incoming.requeue()

    async with Transport(amqp(fed, "seajust")) as transport:
        await publish_directory(config(fed, "seajust"), b'{"not": "a directory"}')
        await transport.consume(DIRECTORY_QUEUE, failing, prefetch=1)
        (dead,) = await _dead_lettered(fed, "seajust")
    assert limit <= deliveries <= limit + 1  # 3.x dead-letters on the one after the limit
    (death,) = dead.headers["x-death"]
    assert (death["queue"], death["reason"]) == (DIRECTORY_QUEUE, "delivery_limit")
    assert await depth(fed, "seajust", DIRECTORY_QUEUE) == 0


async def test_a_directory_queue_an_older_version_declared_is_kept_and_still_bounded(
    dfed: Federation,
) -> None:
    """``mlanet.directory`` as an older version declared it (no delivery limit), holding a
    message that has already been handed back ``delivery_limit`` times: the node keeps the
    queue as it is (never deletes what a publisher may be putting there), says so, and
    quarantines that message as ``delivery_limit`` instead of handling it once more."""
    fed = dfed
    limit = config(fed, "seajust").limits.delivery_limit
    connection = await aio_pika.connect(amqp(fed, "seajust"))
    async with connection:  # as an older version declared it
        legacy = {"x-queue-type": "quorum"}
        await (await connection.channel()).declare_queue(
            DIRECTORY_QUEUE, durable=True, arguments=legacy
        )
    async with Transport(amqp(fed, "seajust")) as transport:
        await transport.publish(DIRECTORY_QUEUE, b"{}", message_id=str(uuid.uuid4()), kind="x")
        for _ in range(limit):  # handed back, as a node that kept failing on it would
            incoming = await transport.get(DIRECTORY_QUEUE)
            assert incoming is not None
            await incoming.requeue()
    with capture_logs() as logs:
        async with running(fed, "seajust"):
            (dead,) = await _dead_lettered(fed, "seajust")
    assert dead.headers["x-mlanet-reason"] == "delivery_limit"
    assert dead.headers["x-mlanet-via"] == DIRECTORY_QUEUE
    assert [e["queue"] for e in _events(logs, "queue_declared_otherwise")] == [DIRECTORY_QUEUE]
    async with Management(ADMIN) as management:
        queues = {q["name"]: q for q in await management.queues(fed.vhost("seajust"))}
    assert "x-delivery-limit" not in queues[DIRECTORY_QUEUE]["arguments"]  # kept as it was


async def _dead_lettered(fed: Federation, network: str) -> list[Drained]:
    async def arrived() -> bool:
        return await quarantine_depth(fed, network) >= 1

    await eventually(arrived, within=60)
    return await drain(fed, network, "mlanet.quarantine")


async def test_a_node_whose_state_file_holds_a_weak_key_starts_on_its_last_good_directory(
    dfed: Federation,
) -> None:
    """As an older version left it: a coordinator-signed version 2 whose coordinator key is the
    identity point, in CASC's state. The node (a real ``mlanet node run``) starts on version 1,
    says so in one log line, keeps the bad file aside, and then follows the coordinator."""
    fed = dfed
    weak = next(data for role, _, data in _forgeries(fed) if role.startswith("coordinator"))
    state = _state(fed, "casc")
    state.mkdir(parents=True, exist_ok=True)
    (state / STATE_FILE).write_bytes(weak)
    await _still_answers(fed, "casc", 1)

    processes = NodeProcesses(fed, ADMIN)
    try:
        processes.start("casc")
        await processes.wait_ready(["casc"], within=90)
    finally:
        processes.stop_all()
    lines = (fed.root / "casc" / "node.log").read_text().splitlines()
    assert not [line for line in lines if "Traceback" in line]
    (refused,) = [json.loads(line) for line in lines if "directory_file_refused" in line]
    assert (refused["file"], refused["source"], refused["reason"], refused["version"]) == (
        STATE_FILE,
        "state",
        "weak_key",
        1,
    )
    assert (state / REFUSED_FILE).read_bytes() == weak
    assert held_version(fed, "casc") == 1

    async with running(fed, "unodc", "seajust", "casc"):
        await mlanet("directory", "renew", "--config", fed.config_path("unodc"))
        await all_hold(fed, 2, ("unodc", "seajust", "casc"))
    await _still_answers(fed, "casc", 2)
