"""What a network's operator does to join the federation, rotate its key, and prepare its broker.

- :func:`init_network` (``mlanet init``): a signing key, an encryption key (origins seal for
  the network from the start), the broker secrets, a node config skeleton that pins the
  coordinator's key and names the dashboard's password file (``mlanet operator password`` writes
  it), and a join request signed with the new key.
- :func:`rotation_request` (``mlanet keys rotate``, ``mlanet keys rotate-encryption``): the next
  signing key, the next encryption key, or both, and a request signed by the current key (and
  the new signing key).
- :func:`provision_broker` (``mlanet directory provision``): the node's vhost and user on its
  own broker, its contact points' users (``mlanet contact-point add``), and the peers' inbox
  permissions the directory calls for;
- :func:`remove_from_broker` (``mlanet federation remove``): the other way: a network that
  joined taken off its broker again (its vhost, its node user, and its link user where the
  directory made one there).

See ``docs/JOINING.md`` for the whole procedure.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlanet.broker.contact_point_access import grant_contact_points, revoke_contact_points
from mlanet.broker.directory_signing import sign_request
from mlanet.broker.errors import ConfigError, MlanetError
from mlanet.broker.keys import generate_key_files, load_public_key_file, load_signing_key
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.peer_access import (
    PEER_TAG,
    close_door,
    door_vhosts,
    inbox_write_pattern,
    open_door,
    rabbit_password_hash,
)
from mlanet.broker.seal import generate_seal_key_files, load_seal_key
from mlanet.broker.strictjson import canonical_bytes
from mlanet.broker.topology import door_sender
from mlanet.nodes.config import NodeConfig, _read_secret
from mlanet.nodes.directory.book import DirectoryBook
from mlanet.nodes.directory.contact_points import vouched_users
from mlanet.nodes.state import state_dir
from mlanet.schemas.directory import JoinRequest, KeyRotationRequest, NetworkEntry, NetworkKey
from mlanet.schemas.sealing import EncryptionKey

__all__ = [
    "JoinFiles",
    "RotationFiles",
    "init_network",
    "next_encryption_key",
    "provision_broker",
    "remove_from_broker",
    "rotation_request",
]

JOIN_REQUEST = "join-request.json"
OPERATOR_LOGIN_FILE = "operator.password"  # the dashboard login: mlanet operator password


@dataclass(frozen=True)
class JoinFiles:
    config: Path
    request: Path
    key: Path
    encryption_key: Path


@dataclass(frozen=True)
class RotationFiles:
    """What a rotation request wrote: the request, and the new key files it asks to list."""

    request: Path
    key: Path | None  # the new signing key, <network>.<n>.key
    encryption_key: Path | None  # the new encryption key, <network>.seal.<n>.key


def _secret(path: Path) -> None:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(24) + "\n")


def _toml_string(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9 ._:/()@,+-]*", value):
        raise ConfigError(f"unexpected characters in {value!r}")
    return f'"{value}"'


def init_network(
    folder: Path,
    *,
    network: str,
    name: str,
    members: list[str],
    observers: list[str],
    contact_points: list[tuple[str, str]],
    role: str,
    broker_host: str,
    broker_port: int,
    vhost: str,
    user: str,
    management_url: str,
    coordinator_key: Path,
    links: list[str],
    link_user: str | None = None,
    allow_plaintext_links: bool = False,
) -> JoinFiles:
    """Write everything a new network needs to ask to join (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    pinned = load_public_key_file(coordinator_key)
    key_path = folder / f"{network}.1.key"
    if key_path.exists():
        raise ConfigError(f"{key_path.name} exists: this folder was initialised already")
    key_path, _ = generate_key_files(folder, network, "ed25519:1")
    state_dir.secure(folder / "state")  # the node's state_dir (node.toml below): owner-only
    key = load_signing_key(key_path)
    sealing_path, _ = generate_seal_key_files(folder, network, "hpke:1")
    sealing = load_seal_key(sealing_path)
    _secret(folder / "broker.password")
    # the link user is not the node's user: at each peer it may only write one inbox exchange
    link_user = link_user or f"{user}-link"
    if link_user == user:
        raise ConfigError("the link user must not be the node's own broker user")
    link_file = "link.password"
    _secret(folder / link_file)
    link_password = (folder / link_file).read_text(encoding="ascii").strip()
    entry = NetworkEntry.model_validate(
        {
            "id": network,
            "name": name,
            "role": role,
            "members": members,
            "observers": observers,
            "contact_points": [
                {"id": cp, "country": cp[:2].upper(), "role": cp_role}
                for cp, cp_role in contact_points
            ],
            "keys": [{"key_id": key.key_id, "public_key": key.public_b64()}],
            "encryption_keys": [{"key_id": sealing.key_id, "public_key": sealing.public_b64()}],
            "broker": {"host": broker_host, "port": broker_port, "vhost": vhost},
            "link_user": {"name": link_user, "password_hash": rabbit_password_hash(link_password)},
        }
    )
    request = JoinRequest(type="join", network=entry, links=links, requested_at=datetime.now(UTC))
    request_path = folder / JOIN_REQUEST
    request_path.write_bytes(canonical_bytes(sign_request(request, [key]).model_dump(mode="json")))
    config_path = folder / "node.toml"
    config_path.write_text(
        f"# {name}: written by mlanet init. The coordinator sends back directory.json once it\n"
        "# has approved join-request.json; then start the node.\n"
        f"network = {_toml_string(network)}\n"
        f'signing_key = "{key_path.name}"\n'
        'directory = "directory.json"\n'
        'state_dir = "state"\n\n'
        "[broker]                               # your own RabbitMQ\n"
        f"host = {_toml_string(broker_host)}\nport = {broker_port}\n"
        f"vhost = {_toml_string(vhost)}\nuser = {_toml_string(user)}\n"
        'password_file = "broker.password"\n'
        f"management_url = {_toml_string(management_url)}\n\n"
        "[link]                                 # your user at your peers' brokers\n"
        f'user = {_toml_string(link_user)}\npassword_file = "{link_file}"\n'
        + (
            "allow_plaintext = true  # peers without TLS on one local broker: development only\n"
            if allow_plaintext_links
            else "# [link.tls]: cert_file, key_file (from the coordinator's link CA), ca_folder\n"
        )
        + "\n"
        "[coordinator]                          # the key that signs the directory\n"
        f"network = {_toml_string(pinned.network)}\n"
        f'keys = [{{ key_id = "{pinned.key_id}", public_key = "{pinned.public_key}" }}]\n\n'
        "[operator]                             # /metrics and the dashboard (OPERATIONS.md)\n"
        'host = "127.0.0.1"\nport = 9464\n'
        f'password_file = "{OPERATOR_LOGIN_FILE}"    # set it: mlanet operator password\n',
        encoding="utf-8",
    )
    return JoinFiles(config_path, request_path, key_path, sealing_path)


def _next_number(listed: list[str], folder: Path, stem: str) -> int:
    """One more than any key number the directory lists or a key file ``<stem>.<n>.key`` in
    ``folder`` has (a number is never used twice, also for a key that was never listed)."""
    on_disk = [
        int(m.group(1))
        for path in folder.glob(f"{stem}.*.key")
        if (m := re.fullmatch(rf"{re.escape(stem)}\.([0-9]+)\.key", path.name))
    ]
    return max([*(int(key_id.split(":")[1]) for key_id in listed), *on_disk, 0]) + 1


def next_encryption_key(config: NodeConfig, entry: NetworkEntry | None) -> Path:
    """Write this network's next encryption key files, ``<network>.seal.<n>.key`` and ``.pub``
    beside the signing key (``n`` one more than any listed or on disk)."""
    folder = config.signing_key.parent
    listed = [key.key_id for key in entry.encryption_keys] if entry else []
    number = _next_number(listed, folder, f"{config.network}.seal")
    key_path, _ = generate_seal_key_files(folder, config.network, f"hpke:{number}")
    return key_path


def rotation_request(
    config: NodeConfig, *, signing: bool = True, encryption: bool = False
) -> RotationFiles:
    """The next signing key (``signing``), the next encryption key (``encryption``) or both
    beside the current ones, and the rotation request for the coordinator (signed by the
    current key, and by the new signing key)."""
    if not (signing or encryption):
        raise ConfigError("a rotation asks for a new signing key, encryption key, or both")
    book = DirectoryBook.load(config, persist=False)
    current = book.signing_key()
    entry = book.held.directory.network(config.network)
    folder = config.signing_key.parent
    signers = [current]
    key_path = new_key = sealing_path = new_sealing = None
    if signing:
        listed = [key.key_id for key in entry.keys] if entry else []
        number = _next_number(listed, folder, config.network)
        key_path, _ = generate_key_files(folder, config.network, f"ed25519:{number}")
        new = load_signing_key(key_path)
        signers.append(new)
        new_key = NetworkKey(key_id=new.key_id, public_key=new.public_b64())
        name = f"key-rotation-{number}.json"
    if encryption:
        sealing_path = next_encryption_key(config, entry)
        sealing = load_seal_key(sealing_path)
        new_sealing = EncryptionKey(key_id=sealing.key_id, public_key=sealing.public_b64())
        if not signing:
            name = f"encryption-key-rotation-{sealing.key_id.split(':')[1]}.json"
    request = KeyRotationRequest(
        type="key_rotation",
        network=config.network,
        current_key_id=current.key_id,
        new_key=new_key,
        new_encryption_key=new_sealing,
        requested_at=datetime.now(UTC),
    )
    path = folder / name
    path.write_bytes(canonical_bytes(sign_request(request, signers).model_dump(mode="json")))
    return RotationFiles(path, key_path, sealing_path)


_INBOX_WRITE = inbox_write_pattern("").removesuffix("$")  # what grant_peer gives, any peer
NODE_TAGS = "policymaker"  # its shovels and policies in its own vhost; it sees nothing else


async def provision_broker(config: NodeConfig, admin: ManagementEndpoint) -> list[str]:
    """Make this node's own broker match the directory (idempotent; run by the operator, never
    by the node): the node's vhost and user (tag ``policymaker`` only, rights on its own vhost
    only), a user for each contact point the node vouches for (``[contact_points] keys``: write
    on the ``mlanet.submit`` exchange, read on its own delivery queue) and none for a contact
    point it no longer vouches for, write access to exactly one inbox exchange for each peer
    the directory links to this network (in the peer's own door vhost, ``<vhost>:door:<peer>``:
    ``broker/peer_access.py``), and no access for a former peer (its door is removed once no
    message waits in it). Returns what was done, one line each."""
    broker = config.broker
    done = []
    async with Management(admin) as management:
        await management.put_vhost(broker.vhost)
        if await management.user(broker.user) is None:
            await management.put_user(broker.user, _read_secret(broker.password_file), NODE_TAGS)
            done.append(f"user {broker.user} created")
        else:
            await management.set_tags(broker.user, NODE_TAGS)
        await management.put_permissions(
            broker.vhost, broker.user, configure=".*", write=".*", read=".*"
        )
        for held in await management.user_permissions(broker.user):
            at = str(held.get("vhost"))
            if at != broker.vhost and door_sender(broker.vhost, at) is None:  # rights at peers
                await management.delete_permissions(str(held.get("vhost")), broker.user)
                done.append(f"{broker.user}: access to vhost {held.get('vhost')} removed")
        await management.put_permissions(
            broker.vhost, admin.user, configure=".*", write=".*", read=".*"
        )
        done.append(f"vhost {broker.vhost} ready for {broker.user}")
        users = [u for u in vouched_users(config.contact_points.keys) if u.vhost == broker.vhost]
        kept = {broker.user, admin.user}
        done += await grant_contact_points(management, users, protected=kept)
        done += await revoke_contact_points(
            management, broker.vhost, {u.name for u in users}, protected=kept
        )
        try:
            directory = DirectoryBook.load(config, persist=False).held.directory
        except (ConfigError, MlanetError) as exc:
            done.append(f"no peers yet ({exc})")
            return done
        protected = {broker.user, admin.user}
        peers = directory.neighbours(config.network)
        for peer in peers:
            entry = directory.network(peer)
            if entry is None or entry.link_user is None:
                continue
            result = await open_door(
                management,
                broker.vhost,
                peer,
                entry.link_user,
                owners=(broker.user, admin.user),
                protected=protected,
            )
            done.append(f"peer {peer} ({entry.link_user.name}): door {result}")
        for peer, door in sorted((await door_vhosts(management, broker.vhost)).items()):
            if peer in peers:
                continue
            if await close_door(management, door):
                done.append(f"former peer {peer}: door {door} removed")
            else:
                done.append(f"former peer {peer}: door {door} kept until its queue is empty")
        # links land in doors: no link user writes anything in the node's own vhost any more
        for grant in await management.vhost_permissions(broker.vhost):
            user, write = str(grant.get("user")), str(grant.get("write"))
            if user in protected or not write.startswith(_INBOX_WRITE):
                continue
            await management.delete_permissions(broker.vhost, user)
            done.append(f"{user}: access to vhost {broker.vhost} removed (it has its door)")
    return done


def _tags(user: dict[str, object]) -> set[str]:
    tags = user.get("tags")
    if isinstance(tags, str):
        return {tag for tag in tags.split(",") if tag}
    return {str(tag) for tag in tags} if isinstance(tags, list) else set()


async def remove_from_broker(config: NodeConfig, admin: ManagementEndpoint) -> list[str]:
    """Take a network that joined off its own broker (run by its operator, its node stopped):
    its vhost (queues, exchanges, links and the peers' permissions there go with it), its node
    user, and its link user where this broker holds the one a directory made (tag
    ``mlanet-peer``). An account that also serves something else (other tags, rights on another
    vhost) is kept, and said so. Returns what was done, one line each."""
    broker = config.broker
    if broker.vhost == "/" or broker.user == admin.user:
        raise ConfigError(
            "refused: the config names the broker's default vhost or the administrator's own "
            "user; nothing removed"
        )
    done = []
    async with Management(admin) as management:
        for door in sorted((await door_vhosts(management, broker.vhost)).values()):
            await management.delete_vhost(door)
            done.append(f"door vhost {door} removed")
        if await management.vhost_exists(broker.vhost):
            await management.delete_vhost(broker.vhost)
            done.append(f"vhost {broker.vhost} removed, with its queues, exchanges and links")
        else:
            done.append(f"vhost {broker.vhost}: not on this broker")
        node_user = await management.user(broker.user)
        if node_user is None:
            done.append(f"user {broker.user}: not on this broker")
        elif _tags(node_user) <= {NODE_TAGS} and not await management.user_permissions(broker.user):
            await management.delete_user(broker.user)
            done.append(f"user {broker.user} removed")
        else:
            done.append(f"user {broker.user} kept: it has other tags or rights on other vhosts")
        if config.link is not None:
            link_user = await management.user(config.link.user)
            if link_user is not None and PEER_TAG in _tags(link_user):
                await management.delete_user(config.link.user)
                done.append(f"link user {config.link.user} removed (and its inbox permissions)")
            elif link_user is not None:
                done.append(f"link user {config.link.user} kept: not made from a directory")
    return done
