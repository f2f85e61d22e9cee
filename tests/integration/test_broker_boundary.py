"""The trust boundary between networks on one broker: a member network that turned hostile, with
its own broker passwords (its node's and its link's) and nothing else, attacks another network
through the RabbitMQ management API and AMQP exactly as the security review did. Each attack is
refused, nothing is lost, and what the broker's administrator changes under a node is put back
or alerted on within seconds. See "Security model" in docs/OPERATIONS.md."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import httpx
import pytest
from typer.testing import CliRunner

from mlanet.broker import ConfigError
from mlanet.broker.management import Management
from mlanet.nodes.cli.app import app
from mlanet.nodes.cli.contact import facilitation_request, read_inbox, submit
from mlanet.nodes.config import load_config
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.operator.status import collect
from mlanet.nodes.runtime.fairness import node_policies
from tests.integration.kit import (
    ADMIN,
    InProcessNodes,
    config,
    credentials,
    eventually,
    outbox_state,
    running,
)

API = "http://127.0.0.1:15672/api"
ATTACKER, VICTIM = "seajust", "casc"


def _q(name: str) -> str:
    return quote(name, safe="")


def _node_auth(fed: Federation, network: str) -> tuple[str, str]:
    return fed.user(network), fed.password(network)


def _link_auth(fed: Federation, network: str) -> tuple[str, str]:
    return fed.link_user(network), fed.link_password(network)


async def _api(auth: tuple[str, str], method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(auth=auth, timeout=60) as client:
        return await client.request(method, API + path, json=body)


def _shovel(src_vhost: str, src_queue: str, dest_vhost: str, dest_queue: str) -> dict[str, Any]:
    return {
        "value": {
            "src-uri": f"amqp:///{_q(src_vhost)}",
            "src-queue": src_queue,
            "dest-uri": f"amqp:///{_q(dest_vhost)}",
            "dest-queue": dest_queue,
        }
    }


@pytest.fixture
async def linked(fed: Federation) -> AsyncIterator[InProcessNodes]:
    """SEAJust and CASC running: their link shovels and inbox policies are in place."""
    async with running(fed, ATTACKER, VICTIM) as nodes:
        yield nodes


async def _journey_delivered(fed: Federation) -> None:
    """A request from Cambodia reaches Uzbekistan and its receipt comes back: nothing was lost
    or diverted by what was tried before."""
    message = facilitation_request("kh-cp-1", "UZ")
    await submit(config(fed, ATTACKER), credentials(fed, message.sender), message)

    async def receipted() -> bool:
        return outbox_state(fed, ATTACKER, message.message_id) == "delivered"

    await eventually(receipted, within=90)
    inbox = await read_inbox(config(fed, VICTIM), credentials(fed, "uz-cp-1"))
    assert [item.message.header.message_id for item in inbox] == [message.message_id]


async def test_each_broker_user_has_only_the_rights_its_job_needs(fed: Federation) -> None:
    """A node's user: tag policymaker only, rights on its own vhost and its peers' doors there
    only. A link user: no management tag, no right in any network's own vhost, and in its door
    at each peer write on exactly its one inbox exchange."""
    async with Management(ADMIN) as management:
        for network in fed.nodes:
            node = await management.user(fed.user(network))
            assert node is not None
            assert set(node["tags"]) == {"policymaker"}
            grants = await management.user_permissions(fed.user(network))
            assert sorted((g["vhost"], g["configure"]) for g in grants) == sorted(
                (vhost, ".*")
                for vhost in (
                    fed.vhost(network),
                    *(fed.door(network, peer) for peer in fed.peers(network)),
                )
            )

            link = await management.user(fed.link_user(network))
            assert link is not None
            assert set(link["tags"]) == {"mlanet-peer"}
            grants = await management.user_permissions(fed.link_user(network))
            assert sorted(g["vhost"] for g in grants) == sorted(
                fed.door(peer, network) for peer in fed.peers(network)
            )
            for grant in grants:
                assert (grant["configure"], grant["read"]) == ("^$", "^$")
                assert grant["write"] == rf"^mlanet\.inbox\.from\.{network}$"


async def test_a_peer_reads_no_shovel_credentials(fed: Federation, linked: InProcessNodes) -> None:
    """Review: GET /api/parameters/shovel/<peer vhost> gave every other network's broker password
    in clear. Now neither of the attacker's users can read a peer's shovel definitions, and no
    listing it can reach holds a peer's password."""
    victim_vhost = fed.vhost(VICTIM)
    secrets = {fed.password(VICTIM), fed.link_password(VICTIM)}
    for auth in (_node_auth(fed, ATTACKER), _link_auth(fed, ATTACKER)):
        direct = await _api(auth, "GET", f"/parameters/shovel/{_q(victim_vhost)}")
        assert direct.status_code in (401, 403), direct.text
        for path in ("/parameters/shovel", "/parameters", "/definitions", "/shovels"):
            listed = await _api(auth, "GET", path)
            assert not any(secret in listed.text for secret in secrets), path
    # the attacker's own node still sees its own links (it declared them)
    own = await _api(
        _node_auth(fed, ATTACKER), "GET", f"/parameters/shovel/{_q(fed.vhost(ATTACKER))}"
    )
    assert own.status_code == 200
    assert {item["name"] for item in own.json()} >= {f"mlanet-link-{VICTIM}"}


async def test_a_peer_cannot_shovel_into_or_out_of_another_network(
    fed: Federation, linked: InProcessNodes
) -> None:
    """Review: a shovel declared in the peer's vhost (or with a source URI ``amqp:///<peer
    vhost>``) moved a contact point's delivered messages into the attacker's vhost, and another
    shovelled the attacker's text into the peer's ``mlanet.submit`` to be signed as the peer.
    Every such declaration is refused; the victim's journeys are untouched."""
    mine, theirs = fed.vhost(ATTACKER), fed.vhost(VICTIM)
    steal = _shovel(theirs, "mlanet.deliver.uz-cp-1", mine, "stolen")
    forge = _shovel(mine, "forged", theirs, "mlanet.submit")
    for auth in (_node_auth(fed, ATTACKER), _link_auth(fed, ATTACKER)):
        in_theirs = await _api(auth, "PUT", f"/parameters/shovel/{_q(theirs)}/evil", steal)
        assert in_theirs.status_code in (401, 403), in_theirs.text
        for name, body in (("steal", steal), ("forge", forge)):
            in_mine = await _api(auth, "PUT", f"/parameters/shovel/{_q(mine)}/{name}", body)
            assert in_mine.status_code in (400, 401, 403), in_mine.text
            if in_mine.status_code == 400:  # refused by the broker's own check of the URI
                assert "may not connect to vhost" in in_mine.text
    async with Management(ADMIN) as management:
        for vhost, network in ((theirs, VICTIM), (mine, ATTACKER)):
            assert await management.shovel_names(vhost) == [
                f"mlanet-link-{peer}" for peer in fed.peers(network)
            ]
    await _journey_delivered(fed)


async def test_a_peer_cannot_police_or_unlink_another_network(
    fed: Federation, linked: InProcessNodes
) -> None:
    """Review: a policy ``max-length: 0`` on the peer's delivery queue dropped receipted
    messages; the peer's link shovel could be deleted. Both are refused to both users."""
    theirs = fed.vhost(VICTIM)
    policy = {"pattern": "^mlanet\\.deliver\\.", "definition": {"max-length": 0}, "priority": 99}
    for auth in (_node_auth(fed, ATTACKER), _link_auth(fed, ATTACKER)):
        put = await _api(
            auth, "PUT", f"/policies/{_q(theirs)}/drop", {**policy, "apply-to": "queues"}
        )
        assert put.status_code in (401, 403), put.text
        operator = await _api(auth, "PUT", f"/operator-policies/{_q(theirs)}/drop", policy)
        assert operator.status_code in (401, 403), operator.text
        unlink = await _api(
            auth, "DELETE", f"/parameters/shovel/{_q(theirs)}/mlanet-link-{ATTACKER}"
        )
        assert unlink.status_code in (401, 403), unlink.text
    async with Management(ADMIN) as management:
        own = node_policies(linked.nodes[VICTIM].config)
        for vhost in {policy.vhost for policy in own}:
            assert sorted(p["name"] for p in await management.policies(vhost)) == sorted(
                policy.name for policy in own if policy.vhost == vhost
            )
        assert f"mlanet-link-{ATTACKER}" in await management.shovel_names(theirs)
    await _journey_delivered(fed)


async def test_a_peer_sees_no_other_vhost_connection_or_user(
    fed: Federation, linked: InProcessNodes
) -> None:
    """Review: the attacker listed every vhost, connection and user on the broker. Its node user
    sees its own vhost and doors and their connections only; its link user is not a management
    user at all."""
    node, link = _node_auth(fed, ATTACKER), _link_auth(fed, ATTACKER)
    own = {fed.vhost(ATTACKER), *(fed.door(ATTACKER, peer) for peer in fed.peers(ATTACKER))}
    vhosts = await _api(node, "GET", "/vhosts")
    assert {v["name"] for v in vhosts.json()} == own
    connections = await _api(node, "GET", "/connections")
    assert {c["user"] for c in connections.json()} <= {fed.user(ATTACKER)}
    assert {c["vhost"] for c in connections.json()} <= own
    queues = await _api(node, "GET", "/queues")
    assert {q["vhost"] for q in queues.json()} <= own
    assert (await _api(node, "GET", "/users")).status_code in (401, 403)
    for path in ("/vhosts", "/connections", "/users", "/overview", "/queues"):
        assert (await _api(link, "GET", path)).status_code in (401, 403), path


def _amqp(auth: tuple[str, str], vhost: str) -> str:
    user, password = (_q(part) for part in auth)
    return f"amqp://{user}:{password}@127.0.0.1:5672/{_q(vhost)}"


async def test_over_amqp_a_peer_may_only_publish_its_own_inbox_exchange(
    fed: Federation, linked: InProcessNodes
) -> None:
    """The attacker's node user cannot open the victim's vhost or doors at all; its link user
    can open only its own door there, and publish to ``mlanet.inbox.from.seajust`` there and
    nothing else (not ``mlanet.submit``, not another network's inbox exchange, not the default
    exchange), and can consume nothing."""
    victim = (fed.vhost(VICTIM), *(fed.door(VICTIM, peer) for peer in fed.peers(VICTIM)))
    for vhost in victim:
        with pytest.raises(aiormq.exceptions.AMQPError):  # the broker closes it: not allowed
            await aio_pika.connect(_amqp(_node_auth(fed, ATTACKER), vhost), timeout=30)
    door = fed.door(VICTIM, ATTACKER)
    async with await aio_pika.connect(
        _amqp(_link_auth(fed, ATTACKER), door), timeout=30
    ) as connection:
        for exchange in ("mlanet.submit", "mlanet.inbox.from.ejn", ""):
            channel = await connection.channel(publisher_confirms=True)
            target = (
                channel.default_exchange
                if exchange == ""
                else await channel.get_exchange(exchange, ensure=False)
            )
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await target.publish(aio_pika.Message(b"{}"), routing_key="mlanet.submit")
        channel = await connection.channel()
        queue = await channel.get_queue(f"mlanet.inbox.{ATTACKER}", ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.get(fail=False)
    await _journey_delivered(fed)


async def test_a_peer_cannot_see_another_networks_queues(
    fed: Federation, linked: InProcessNodes
) -> None:
    """Review: RabbitMQ checks no permission on a passive ``queue.declare``, so a link user that
    could open the victim's vhost learnt which queues exist there, their depth and consumers
    (the victim's traffic with its contact points and its other peers). The link user now
    cannot open the victim's vhost, nor another peer's door; in its own door a passive declare
    of any of the victim's queues (delivery, out, quarantine, submit, another peer's inbox)
    finds nothing, though each of them exists."""
    theirs = fed.vhost(VICTIM)
    other = next(peer for peer in fed.peers(VICTIM) if peer != ATTACKER)
    hidden = [
        "mlanet.deliver.uz-cp-1",
        f"mlanet.out.{other}",
        "mlanet.quarantine",
        "mlanet.submit",
        f"mlanet.inbox.{other}",
    ]
    async with await aio_pika.connect(_amqp((ADMIN.user, ADMIN.password), theirs)) as admin:
        channel = await admin.channel()
        for name in hidden[:-1]:  # they are there, in the victim's vhost
            await channel.declare_queue(name, passive=True)
    async with await aio_pika.connect(
        _amqp((ADMIN.user, ADMIN.password), fed.door(VICTIM, other))
    ) as admin:
        await (await admin.channel()).declare_queue(hidden[-1], passive=True)

    link = _link_auth(fed, ATTACKER)
    for vhost in (theirs, fed.door(VICTIM, other)):
        with pytest.raises(aiormq.exceptions.AMQPError):  # not allowed: closed at once
            await aio_pika.connect(_amqp(link, vhost), timeout=30)
    async with await aio_pika.connect(
        _amqp(link, fed.door(VICTIM, ATTACKER)), timeout=30
    ) as connection:
        for name in hidden:
            channel = await connection.channel()
            with pytest.raises(
                (aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelAccessRefused)
            ):
                await channel.declare_queue(name, passive=True)
    await _journey_delivered(fed)


async def test_a_shovel_or_policy_removed_or_changed_under_a_node_is_put_back(
    fed: Federation, linked: InProcessNodes
) -> None:
    """Even the broker's administrator (the only other account with rights in the vhost and its
    doors) cannot quietly unlink a node: a deleted or redirected link shovel, a deleted or
    altered inbox policy and a door's deleted binding are put back within seconds, and the
    journey still arrives."""
    vhost, door = fed.vhost(VICTIM), fed.door(VICTIM, ATTACKER)
    link = f"mlanet-link-{ATTACKER}"
    exchange, queue = f"mlanet.inbox.from.{ATTACKER}", f"mlanet.inbox.{ATTACKER}"
    async with Management(ADMIN) as management:
        declared = (await management.shovel_definitions(vhost))[link]
        await management.delete_shovel(vhost, link)
        policy = f"mlanet-inbox-{ATTACKER}"
        await management.put_policy(door, policy, pattern="^nothing$", definition={"max-length": 1})
        unbound = await _api(
            (ADMIN.user, ADMIN.password),
            "DELETE",
            f"/bindings/{_q(door)}/e/{_q(exchange)}/q/{_q(queue)}/~",
        )
        assert unbound.status_code == 204, unbound.text

        async def repaired() -> bool:
            shovels = await management.shovel_definitions(vhost)
            found = await management.policy(door, policy)
            return (
                shovels.get(link) == declared
                and found is not None
                and found["pattern"] != "^nothing$"
                and (door, exchange, queue) in await management.bindings_everywhere()
            )

        await eventually(repaired, within=20)
        redirected = {**declared, "dest-exchange": "mlanet.inbox.from.somewhere-else"}
        put = await _api(
            (ADMIN.user, ADMIN.password),
            "PUT",
            f"/parameters/shovel/{_q(vhost)}/{_q(link)}",
            {"value": redirected},
        )
        assert put.status_code in (201, 204), put.text

        async def restored() -> bool:
            return (await management.shovel_definitions(vhost)).get(link) == declared

        await eventually(restored, within=20)
    reply = facilitation_request("uz-cp-1", "KH")
    await submit(config(fed, VICTIM), credentials(fed, reply.sender), reply)

    async def receipted() -> bool:
        return outbox_state(fed, VICTIM, reply.message_id) == "delivered"

    await eventually(receipted, within=90)


async def test_a_policy_the_node_did_not_set_is_a_critical_alert(
    fed: Federation, linked: InProcessNodes
) -> None:
    """A policy on a delivery queue that the node did not set (the review's ``max-length: 0``)
    shows as a critical ``broker_foreign`` alert in ``mlanet status`` within seconds, and goes
    away once it is removed."""
    vhost = fed.vhost(VICTIM)
    async with Management(ADMIN) as management:
        await management.put_policy(
            vhost, "drop", pattern="^mlanet\\.deliver\\.", definition={"max-length": 0}, priority=99
        )
        try:

            async def alerted() -> bool:
                status = await collect(config(fed, VICTIM), time.time())
                return any(
                    a.code == "broker_foreign" and "policy drop" in a.text for a in status.alerts
                )

            await eventually(alerted, within=30, every=1.0)
        finally:
            await management.delete_policy(vhost, "drop")

    async def cleared() -> bool:
        status = await collect(config(fed, VICTIM), time.time())
        return not any(a.code == "broker_foreign" for a in status.alerts)

    await eventually(cleared, within=30, every=1.0)


def test_a_node_config_with_an_administrator_account_is_refused(fed: Federation) -> None:
    """Provisioning happens once, by the operator: a config that still carries
    ``[provisioning]`` (the broker administrator, used at run time by earlier versions) does not
    load, and says what to do instead."""
    path = fed.config_path(VICTIM)
    path.write_text(
        path.read_text(encoding="utf-8")
        + '\n[provisioning]\nuser = "guest"\npassword_file = "admin.password"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="mlanet directory provision"):
        load_config(path)


def test_the_administrator_password_is_never_an_argument(tmp_path: Path) -> None:
    """``--admin-password`` (visible in ``ps``) is gone: the password comes from a file or a
    prompt, and a missing file is one clear line."""
    runner = CliRunner()
    given = runner.invoke(app, ["federation", "init", "--admin-password", "secret"])
    assert given.exit_code == 2
    assert "No such option" in given.output
    missing = runner.invoke(
        app,
        [
            "federation",
            "init",
            "--dir",
            str(tmp_path / "federation"),
            "--admin-user",
            "admin",
            "--admin-password-file",
            str(tmp_path / "absent"),
        ],
    )
    assert missing.exit_code == 2
    assert "cannot read --admin-password-file" in missing.output
