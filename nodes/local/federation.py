"""A local federation on one RabbitMQ: six nodes, the five example networks and the
coordinator's.

One vhost, one door vhost per linked peer and two broker users per network (see "Security
model" in docs/OPERATIONS.md):

- the node's user (``<prefix>-<network>``): everything in its own vhost and in its doors
  (``<prefix>-<network>:door:<peer>``, where each peer's links land) and nothing anywhere else;
  tagged ``policymaker`` only (it declares its links' shovels and its queues' policies there),
  so through the management API it sees its own vhosts and connections only;
- the link user (``<prefix>-<network>-link``), which its links log in as at each peer: no
  management tag, and in its door at each linked peer only write on one exchange,
  ``mlanet.inbox.from.<network>``; no right in any network's own vhost. Its password is in the
  shovel definitions of the network's own vhost, which no peer can read.

Each contact point of the directory has a key and a broker user of its own
(``<prefix>-<network>-cp-<contact point>``: write on the exchange ``mlanet.submit`` and read on its
own delivery queue, nothing else; see ``nodes/directory/contact_points.py``). Its credentials folder
is ``<network>/credentials/<contact point>/`` (what ``mlanet send`` and ``mlanet inbox`` take as
``--credentials``); the node vouches for it in ``<network>/contact-points/``.

``build`` writes keys, secrets, the directory and one node config per network, and records the
federation (its prefix, networks and links) in ``<root>/federation.json``; ``provision`` creates
the vhosts, users and permissions through the management API, once, as an operator command (the
nodes never hold the administrator's password); ``teardown`` removes them, and
:meth:`Federation.load` reads the record back, so that ``mlanet federation down`` removes what
``init`` made and nothing else (it never guesses a prefix). Used by ``mlanet federation``, the
demo, the tests and the benchmarks.

The coordinator (``unodc``) has a node too, linked to the first network: it signs the directory
with a key of its own, ``<root>/unodc/coordinator/unodc-directory.1.key`` (its public half,
``unodc-directory.1.pub``, is the key a joining network pins; ``<root>/unodc/unodc.1.pub`` is
the key the coordinator's node signs its messages with), and publishes updates through its node.
``directory.json`` is the signed version 1; every config pins the coordinator's directory key.

The same federation with each network on a RabbitMQ node of its own, linked over AMQPS with
mutual TLS, is ``nodes/local/own_brokers.py``: it writes the TLS files, makes the brokers'
folders and calls :func:`build` with each network's :class:`BrokerSite` (the configs then
carry ``[broker.tls]`` and ``[link.tls]`` and no plaintext allowance, the directory each
broker's ``tls`` entry and the link CA), and ``federation.json`` records the brokers.
:func:`provision_network` is one network's provisioning, on whichever broker is its own.

One network on a RabbitMQ cluster of its own, the others on the shared broker (plaintext links):
``build(clusters=...)`` with its :class:`~mlanet.nodes.local.sites.ClusterSite`
(``nodes/local/sites.py``, which says which node the directory lists for peers' links);
``provision`` and ``teardown`` reach the cluster with its administrator.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from mlanet.broker.contact_point_access import grant_contact_points
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.directory_tls import ca_entry
from mlanet.broker.errors import ConfigError, MlanetError
from mlanet.broker.keys import (
    b64u_decode,
    generate_key_files,
    load_public_key_file,
    load_signing_key,
)
from mlanet.broker.management import Management, ManagementEndpoint
from mlanet.broker.peer_access import door_vhosts, open_door, rabbit_password_hash
from mlanet.broker.seal import generate_seal_key_files, seal_key_files
from mlanet.broker.topology import door_vhost
from mlanet.nodes.directory.contact_points import vouched_users, write_contact_point
from mlanet.nodes.local.brokers import BrokerRecord
from mlanet.nodes.local.sites import ClusterSite
from mlanet.nodes.operator.auth import hash_password
from mlanet.nodes.runtime.lifecycle import Lifecycle, Phase, read_lifecycle
from mlanet.nodes.state import state_dir
from mlanet.schemas.directory import Directory

__all__ = [
    "COORDINATOR",
    "EXAMPLE_LINKS",
    "EXAMPLE_NETWORKS",
    "FEDERATION_FILE",
    "BrokerSite",
    "Federation",
    "NodeFailed",
    "NodeProcesses",
    "build",
    "check_folder",
    "provision",
    "provision_network",
    "signed_directory",
    "teardown",
]

EU = [
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
]
EXAMPLE_NETWORKS: dict[str, tuple[str, list[str]]] = {
    "seajust": (
        "South East Asia Justice Network",
        ["BN", "KH", "LA", "MM", "SG", "TH", "TL", "VN"],
    ),
    "casc": (
        "Central Asia and Southern Caucasus Network",
        ["AM", "AZ", "GE", "KZ", "KG", "TJ", "TM", "UZ"],
    ),
    "wacap": (
        "West African Network of Central Authorities and Prosecutors",
        [
            "BJ",
            "BF",
            "CV",
            "CI",
            "GM",
            "GH",
            "GN",
            "GW",
            "LR",
            "ML",
            "NE",
            "NG",
            "SN",
            "SL",
            "TG",
            "MR",
        ],
    ),
    "gljc": (
        "Great Lakes Judicial Cooperation Network",
        ["AO", "BI", "CF", "CG", "CD", "KE", "RW", "SS", "SD", "TZ", "UG", "ZM"],
    ),
    "ejn": ("European Judicial Network", EU),
}
COORDINATOR = "unodc"
FEDERATION_FILE = "federation.json"  # what init made: prefix, networks, links (for down)
COORDINATOR_NAME = "United Nations Office on Drugs and Crime (coordinator)"
# SEAJust and CASC are linked (the seed's Uzbekistan matter); EJN bridges to Africa.
EXAMPLE_LINKS: list[tuple[str, str]] = [
    ("seajust", "casc"),
    ("casc", "ejn"),
    ("ejn", "wacap"),
    ("wacap", "gljc"),
    ("ejn", "gljc"),
]


@dataclass(frozen=True)
class Federation:
    root: Path
    prefix: str
    networks: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    host: str = "127.0.0.1"
    port: int = 5672
    coordinator: str | None = COORDINATOR
    # Each network's own RabbitMQ node (nodes/local/own_brokers.py); empty: one shared broker.
    brokers: tuple[BrokerRecord, ...] = ()
    # Networks on a RabbitMQ cluster of their own (nodes/local/sites.py), shared-broker mode.
    clusters: tuple[ClusterSite, ...] = ()
    # Each node's state in this PostgreSQL database (a schema per network: ``schema``), shared
    # by its replicas; None: SQLite in each node's state folder.
    database_url: str | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every network with a node here: the member networks and the coordinator."""
        return (*self.networks, *((self.coordinator,) if self.coordinator else ()))

    def coordinator_key(self) -> Path:
        """The coordinator's directory signing key (not its node's message key)."""
        assert self.coordinator is not None
        return self.root / self.coordinator / "coordinator" / f"{self.coordinator}-directory.1.key"

    def coordinator_pub(self) -> Path:
        """Its public half: the file a joining network pins (``mlanet init --coordinator-key``)."""
        return self.coordinator_key().with_suffix(".pub")

    @classmethod
    def load(cls, root: Path) -> Federation:
        """The federation ``build`` recorded in ``root`` (ConfigError when there is none)."""
        try:
            raw = json.loads((root / FEDERATION_FILE).read_text(encoding="utf-8"))
            federation = cls(
                root,
                str(raw["prefix"]),
                tuple(str(network) for network in raw["networks"]),
                tuple((str(a), str(b)) for a, b in raw["links"]),
                str(raw["host"]),
                int(raw["port"]),
                coordinator=None if raw["coordinator"] is None else str(raw["coordinator"]),
                brokers=tuple(BrokerRecord.from_json(item) for item in raw.get("brokers", [])),
                database_url=raw.get("database_url"),
                clusters=tuple(ClusterSite.from_json(item) for item in raw.get("clusters", [])),
            )
            _check_prefix(federation.prefix)
        except OSError:
            raise ConfigError(
                f"{root} holds no {FEDERATION_FILE}: it is not a folder mlanet federation init "
                "wrote (or an older version wrote it)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{root / FEDERATION_FILE} cannot be read ({exc})") from None
        return federation

    def record(self) -> None:
        """Write ``federation.json``: what ``load`` reads back."""
        fields = {
            "prefix": self.prefix,
            "networks": list(self.networks),
            "links": [list(link) for link in self.links],
            "host": self.host,
            "port": self.port,
            "coordinator": self.coordinator,
            "brokers": [broker.to_json() for broker in self.brokers],
            "database_url": self.database_url,
            "clusters": [site.to_json() for site in self.clusters],
        }
        (self.root / FEDERATION_FILE).write_text(
            json.dumps(fields, indent=2) + "\n", encoding="utf-8"
        )

    def vhost(self, network: str) -> str:
        return f"{self.prefix}-{network}"

    def schema(self, network: str) -> str:
        """``network``'s PostgreSQL schema (with ``database_url``)."""
        return f"{self.prefix}_{network}".lower().replace("-", "_")

    def broker(self, network: str) -> BrokerRecord | None:
        """``network``'s own broker, or None when the federation shares one."""
        return next((b for b in self.brokers if b.spec.network == network), None)

    def cluster(self, network: str) -> ClusterSite | None:
        """The cluster ``network`` is on, or None when it is on the federation's broker."""
        return next((site for site in self.clusters if site.network == network), None)

    def door(self, network: str, peer: str) -> str:
        """The vhost where ``peer``'s links land at ``network`` (``topology.door_vhost``)."""
        return door_vhost(self.vhost(network), peer)

    def user(self, network: str) -> str:
        return f"{self.prefix}-{network}"

    def config_path(self, network: str) -> Path:
        return self.root / network / "node.toml"

    def password(self, network: str) -> str:
        """The node's own broker password."""
        return (self.root / network / "broker.password").read_text(encoding="ascii").strip()

    def link_user(self, network: str) -> str:
        """The user that ``network``'s links log in as at its peers' vhosts."""
        return f"{self.prefix}-{network}-link"

    def link_password(self, network: str) -> str:
        return (self.root / network / "link.password").read_text(encoding="ascii").strip()

    def contact_point_keys(self, network: str) -> Path:
        """The node's folder of the contact points it vouches for ([contact_points] keys)."""
        return self.root / network / "contact-points"

    def credentials(self, contact_point: str) -> Path:
        """A contact point's credentials folder (``--credentials`` of send and inbox), under
        its network's folder (a network that joined later included)."""
        for network in sorted(self.root.iterdir()):
            folder = network / "credentials" / contact_point
            if folder.is_dir():
                return folder
        raise KeyError(f"no credentials for {contact_point}")

    def peers(self, network: str) -> list[str]:
        return sorted(
            {b for a, b in self.links if a == network} | {a for a, b in self.links if b == network}
        )


@dataclass(frozen=True)
class BrokerSite:
    """A network's own broker as its node config and its directory entry name it
    (``nodes/local/own_brokers.py``): where it takes AMQPS and the management API, the name its
    server certificate carries, and its network's CA certificate (PEM) that issued it. The
    node's TLS files are at fixed places in the network's folder (``TLS_FILES``)."""

    port: int
    management_url: str
    ca_pem: str
    server_name: str = "localhost"


# What a network's node config names in its folder when it has a broker of its own.
TLS_FILES = {"ca": "tls/ca.pem", "link_cert": "tls/link.pem", "link_key": "tls/link.key"}
PEER_CA_FOLDER = "tls/peers"


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", prefix):
        raise ValueError("prefix must be short lower-case ASCII")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(value + "\n")


def _contact_point(country: str) -> dict[str, str]:
    return {"id": f"{country.lower()}-cp-1", "country": country, "role": "contact point"}


def check_folder(root: Path, prefix: str) -> None:
    """ConfigError when ``root`` records a federation that a new one must not overwrite: one
    with another prefix (its vhosts may still be on the broker, and only its own record lets
    ``down`` remove them), or one on brokers of its own whose folders are still there (they
    may still run: down first)."""
    _check_prefix(prefix)
    try:
        earlier: Federation | None = Federation.load(root)
    except ConfigError:
        earlier = None
    if earlier is not None and earlier.prefix != prefix:
        raise ConfigError(
            f"{root} holds the federation with prefix {earlier.prefix}: remove it first (mlanet "
            f"federation down --dir {root}), or write this one to another folder"
        )
    if earlier is not None and any(record.spec.root.exists() for record in earlier.brokers):
        raise ConfigError(
            f"{root} holds a federation on brokers of its own, which may still run: remove it "
            f"first (mlanet federation down --dir {root}), or write this one to another folder"
        )


def build(
    root: Path,
    *,
    prefix: str = "mlanet",
    networks: dict[str, tuple[str, list[str]]] | None = None,
    links: list[tuple[str, str]] | None = None,
    host: str = "127.0.0.1",
    port: int = 5672,
    management_url: str = "http://127.0.0.1:15672",
    receipts: dict[str, float] | None = None,
    operator_port: int = 0,
    coordinator: str | None = COORDINATOR,
    valid_for: timedelta = timedelta(days=30),
    sites: Mapping[str, BrokerSite] | None = None,
    link_ca_pem: str | None = None,
    brokers: tuple[BrokerRecord, ...] = (),
    database_url: str | None = None,
    clusters: tuple[ClusterSite, ...] = (),
) -> Federation:
    """Write keys, passwords, ``directory.json`` and ``<network>/node.toml`` under ``root``.

    No config holds the broker administrator's password: ``provision`` is run once, by the
    operator (``mlanet federation init``), and ``mlanet directory provision`` after a directory
    update links a new peer.

    Each node's operator HTTP surface gets port ``operator_port + i`` (the i-th network), or any
    free port when ``operator_port`` is 0 (the node writes its URL to ``state/operator.json``).
    One operator password for the whole local federation: ``operator.secret`` holds it,
    ``operator.password`` its hash.

    With ``sites`` (every node's own broker, ``nodes/local/own_brokers.py``, which writes the
    TLS files first) each node's config names its own broker over TLS (``[broker.tls]``) and
    its link certificate (``[link.tls]``), the directory lists each broker's AMQPS endpoint
    and CA and the coordinator's link CA (``link_cas``, ``link_ca_pem``), and ``brokers`` is
    recorded for ``down``. A link user then logs in by its certificate only: the directory
    publishes the hash of a random password that nobody keeps.

    With ``database_url`` (PostgreSQL, a URL without password) each node's state is in a schema
    of its own there (``[database]``), so that it can run as several replicas; ``teardown``
    drops the schemas.

    With ``clusters`` (shared-broker mode only) each of those networks is on a RabbitMQ cluster
    of its own: its config names the cluster's nodes, its directory entry the node peers' links
    go to (``nodes/local/sites.py``).

    A folder that already records a federation with another prefix is refused (ConfigError):
    its vhosts may still be on the broker, and only its own record lets ``down`` remove them.
    """
    if not brokers:  # own_brokers.prepare checked it before it made the brokers' folders
        check_folder(root, prefix)
    _check_prefix(prefix)
    networks = networks or EXAMPLE_NETWORKS
    links = list(links or EXAMPLE_LINKS)
    nodes = dict(networks)
    if coordinator is not None:
        nodes[coordinator] = (COORDINATOR_NAME, [])
        links.append((coordinator, next(iter(networks))))
    if sites is not None and (set(sites) != set(nodes) or link_ca_pem is None):
        raise ValueError("own brokers need a site for every node and the link CA")
    if clusters and (sites is not None or not {site.network for site in clusters} <= set(nodes)):
        raise ValueError("a cluster site is for a network of a shared-broker federation")
    federation = Federation(
        root,
        prefix,
        tuple(networks),
        tuple(links),
        host,
        port,
        coordinator=coordinator,
        brokers=brokers,
        database_url=database_url,
        clusters=clusters,
    )
    root.mkdir(parents=True, exist_ok=True)
    federation.record()  # first: whatever else fails, down knows what to remove
    entries = [
        _entry(federation, network, name, members, None if sites is None else sites[network])
        for network, (name, members) in nodes.items()
    ]
    pins = ""
    if coordinator is not None:
        pins = _sign_directory(federation, entries, links, valid_for, link_ca_pem)
    receipt_lines = "".join(f"{k} = {v}\n" for k, v in (receipts or {}).items())
    if not (root / "operator.password").exists():
        operator_secret = secrets.token_urlsafe(18)
        _write_secret(root / "operator.secret", operator_secret)
        _write_secret(root / "operator.password", hash_password(operator_secret))
    for index, network in enumerate(nodes):
        operator = (
            f"\n[operator]\nport = {operator_port + index if operator_port else 0}\n"
            'password_file = "../operator.password"\n'
        )
        site = None if sites is None else sites[network]
        # Peers come from the directory's links; [link] is our user at their brokers.
        peers = _link_table(federation, network, site) + pins
        if network == coordinator:
            peers += f'signing_key = "coordinator/{federation.coordinator_key().name}"\n'
        federation.config_path(network).write_text(
            f'network = "{network}"\n'
            f'signing_key = "{network}.1.key"\n'
            'directory = "../directory.json"\n'
            'state_dir = "state"\n\n'
            + _broker_table(federation, network, (host, port, management_url), site)
            + '\n[contact_points]\nkeys = "contact-points"\n'
            f"{peers}\n[receipts]\n{receipt_lines}{operator}"
            + _database_table(federation, network),
            encoding="utf-8",
        )
        for country in nodes[network][1]:
            contact_point = _contact_point(country)["id"]
            if not (federation.contact_point_keys(network) / f"{contact_point}.pub").exists():
                write_contact_point(
                    federation.contact_point_keys(network),
                    federation.user(network),
                    federation.vhost(network),
                    contact_point,
                    root / network / "credentials" / contact_point,
                )
    return federation


def _database_table(federation: Federation, network: str) -> str:
    if federation.database_url is None:
        return ""
    return (
        f'\n[database]\nurl = "{federation.database_url}"\n'
        f'schema_name = "{federation.schema(network)}"\n'
    )


def drop_schemas(federation: Federation) -> None:
    """Drop the federation's PostgreSQL schemas (with ``database_url``; a password comes from
    ``PGPASSWORD`` or ``~/.pgpass``, as for any libpq client)."""
    if federation.database_url is None:
        return
    try:
        with psycopg.connect(federation.database_url, autocommit=True, connect_timeout=10) as db:
            for network in federation.nodes:
                db.execute(f'DROP SCHEMA IF EXISTS "{federation.schema(network)}" CASCADE')
    except psycopg.Error as exc:
        raise ConfigError(f"cannot drop the federation's schemas ({type(exc).__name__})") from None


def _entry(
    federation: Federation,
    network: str,
    name: str,
    members: list[str],
    site: BrokerSite | None,
) -> dict[str, object]:
    """``network``'s directory entry (its key and secrets made when missing)."""
    folder = federation.root / network
    folder.mkdir(parents=True, exist_ok=True)
    state_dir.secure(folder / "state")  # the node's state_dir: owner-only
    if not (folder / f"{network}.1.key").exists():
        generate_key_files(folder, network, "ed25519:1")
    public = load_public_key_file(folder / f"{network}.1.pub")
    sealing_private, sealing_public = seal_key_files(folder, network, "hpke:1")
    if not sealing_private.exists():
        generate_seal_key_files(folder, network, "hpke:1")
    sealing = json.loads(sealing_public.read_text(encoding="ascii"))
    host, port = federation.host, federation.port if site is None else site.port
    if (on_cluster := federation.cluster(network)) is not None:
        host, port = on_cluster.listed_address  # one node: peers' plaintext shovels name one
    for secret in (
        ("broker.password",) if site is not None else ("broker.password", "link.password")
    ):
        if not (folder / secret).exists():
            _write_secret(folder / secret, secrets.token_urlsafe(24))
    # by certificate only on brokers of their own: the hash of a password nobody keeps
    link_password = (
        secrets.token_urlsafe(24) if site is not None else federation.link_password(network)
    )
    entry: dict[str, object] = {
        "id": network,
        "name": name,
        "members": members,
        "contact_points": [_contact_point(country) for country in members],
        "keys": [{"key_id": public.key_id, "public_key": public.public_key}],
        "encryption_keys": [{"key_id": sealing["key_id"], "public_key": sealing["public_key"]}],
        "broker": {
            "host": host,
            "port": port,
            "vhost": federation.vhost(network),
        },
        "link_user": {
            "name": federation.link_user(network),
            "password_hash": rabbit_password_hash(link_password),
        },
    }
    if site is not None:
        entry["tls"] = {
            "endpoints": [
                {"host": federation.host, "port": site.port, "server_name": site.server_name}
            ],
            "cas": [ca_entry(site.ca_pem, f"{network}-ca-1").model_dump()],
        }
    return entry


def _sign_directory(
    federation: Federation,
    entries: list[dict[str, object]],
    links: list[tuple[str, str]],
    valid_for: timedelta,
    link_ca_pem: str | None,
) -> str:
    """Write the signed ``directory.json`` (version 1); return the ``[coordinator]`` table
    that pins its key in every config."""
    coordinator = federation.coordinator
    assert coordinator is not None
    key_folder = federation.root / coordinator / "coordinator"
    if not federation.coordinator_key().exists():
        # named apart from the node's own unodc.1.key/.pub beside it: joiners pin this one
        for made in generate_key_files(key_folder, coordinator, "ed25519:1"):
            made.rename(made.with_name(f"{coordinator}-directory.1{made.suffix}"))
    directory_key = load_signing_key(federation.coordinator_key())
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "version": 1,
        "issued_at": now,
        "valid_until": now + valid_for,
        "coordinator": coordinator,
        "coordinator_keys": [
            {"key_id": directory_key.key_id, "public_key": directory_key.public_b64()}
        ],
        "networks": entries,
        "links": [list(link) for link in links],
    }
    if link_ca_pem is not None:
        fields["link_cas"] = [ca_entry(link_ca_pem, "link-ca-1").model_dump()]
    directory = Directory.model_validate(fields, strict=False)
    (federation.root / "directory.json").write_bytes(
        sign_directory(directory, directory_key).to_bytes()
    )
    return (
        f'\n[coordinator]\nnetwork = "{coordinator}"\n'
        f'keys = [{{ key_id = "{directory_key.key_id}", '
        f'public_key = "{directory_key.public_b64()}" }}]\n'
    )


def _broker_table(
    federation: Federation,
    network: str,
    shared: tuple[str, int, str],
    site: BrokerSite | None,
) -> str:
    """``[broker]``: the shared broker (``shared``: host, port, management URL), the network's
    cluster (its first node, and the others to fail over to), or the network's own broker over
    TLS (``[broker.tls]``: its CA, the name in its certificate; the node logs in with its
    password over TLS)."""
    host, port, management_url = shared
    on_cluster = federation.cluster(network)
    if on_cluster is not None:
        (host, port), management_url = on_cluster.first, on_cluster.management_urls[0]
    table = (
        "[broker]\n"
        f'host = "{host}"\nport = {port if site is None else site.port}\n'
        f'vhost = "{federation.vhost(network)}"\n'
        f'user = "{federation.user(network)}"\n'
        'password_file = "broker.password"\n'
        f'management_url = "{management_url if site is None else site.management_url}"\n'
        + ("" if on_cluster is None else on_cluster.broker_lines())
    )
    if site is not None:
        table += (
            f'\n[broker.tls]\nca_file = "{TLS_FILES["ca"]}"\n'
            f'server_name = "{site.server_name}"\nlogin = "password"\n'
        )
    return table


def _link_table(federation: Federation, network: str, site: BrokerSite | None) -> str:
    """``[link]``: a password and plaintext (one shared broker: development only), or the link
    certificate the coordinator's link CA issued (``[link.tls]``) on brokers of their own."""
    table = f'\n[link]\nuser = "{federation.link_user(network)}"\n'
    if site is None:
        return (
            table + 'password_file = "link.password"\n'
            "allow_plaintext = true  # one local broker: development only\n"
        )
    return (
        table + f'\n[link.tls]\ncert_file = "{TLS_FILES["link_cert"]}"\n'
        f'key_file = "{TLS_FILES["link_key"]}"\nca_folder = "{PEER_CA_FOLDER}"\n'
    )


NODE_TAGS = "policymaker"  # declares shovels and policies in its own vhost; sees nothing else


def signed_directory(federation: Federation) -> Directory:
    """The directory ``build`` wrote (version 1, as signed)."""
    signed = json.loads((federation.root / "directory.json").read_bytes())
    return Directory.model_validate_json(b64u_decode(signed["document"]))


async def provision(federation: Federation, admin: ManagementEndpoint) -> None:
    """Create each network's vhost and node user, each of its contact points' users (from the
    hashes in its node's folder), and each link's door: a vhost per (network, peer) where the
    peer's link user may only write its one inbox exchange (from the directory's published
    hash), as ``mlanet directory provision`` does for a network on a broker of its own. A
    network on a cluster of its own is provisioned there, by the cluster's administrator."""
    directory = signed_directory(federation)
    async with Management(admin) as management:
        for network in federation.nodes:
            if federation.cluster(network) is None:
                await provision_network(management, federation, directory, network, admin.user)
    for site in federation.clusters:
        endpoint = site.admin()
        async with Management(endpoint) as management:
            await provision_network(management, federation, directory, site.network, endpoint.user)


async def provision_network(
    management: Management,
    federation: Federation,
    directory: Directory,
    network: str,
    admin_user: str,
) -> None:
    """``network``'s part of :func:`provision` on the broker ``management`` administers (the
    shared one, or the network's own): its vhost and node user, its contact points' users,
    and a door for each linked peer."""
    vhost, user = federation.vhost(network), federation.user(network)
    await management.put_vhost(vhost)
    await management.put_user(user, federation.password(network), NODE_TAGS)
    await management.put_permissions(vhost, user, configure=".*", write=".*", read=".*")
    # the administrator keeps access for operators' tools and tests
    await management.put_permissions(vhost, admin_user, configure=".*", write=".*", read=".*")
    protected = {federation.user(n) for n in federation.nodes} | {admin_user}
    users = vouched_users(federation.contact_point_keys(network))
    if users:
        await grant_contact_points(management, users, protected=protected)  # one request
    for peer in federation.peers(network):
        entry = directory.network(peer)
        if entry is None or entry.link_user is None:
            continue
        await open_door(
            management,
            vhost,
            peer,
            entry.link_user,
            owners=(user, admin_user),
            protected=protected,
        )


async def teardown(federation: Federation, admin: ManagementEndpoint) -> None:
    """Delete the federation's vhosts and doors (their queues and shovels go with them) and
    users (its contact points' users are the ones its nodes' folders vouch for), and its
    PostgreSQL schemas (with ``database_url``); those of a network on a cluster of its own
    there, with the cluster's administrator."""
    drop_schemas(federation)
    shared = [network for network in federation.nodes if federation.cluster(network) is None]
    async with Management(admin) as management:
        await _remove(management, federation, shared)
    for site in federation.clusters:
        async with Management(site.admin()) as management:
            await _remove(management, federation, [site.network])


async def _remove(management: Management, federation: Federation, networks: list[str]) -> None:
    """Delete ``networks``' vhosts, doors and users on the broker ``management`` administers,
    and every link user of the federation there (peers' links log in where their doors are)."""
    users = [federation.link_user(network) for network in federation.nodes]
    for network in networks:
        for door in (await door_vhosts(management, federation.vhost(network))).values():
            await management.delete_vhost(door)
        await management.delete_vhost(federation.vhost(network))
        users.append(federation.user(network))
        users += [user.name for user in vouched_users(federation.contact_point_keys(network))]
    await management.delete_users(users)  # one request; absent ones skipped


def replica_key(network: str, replica: str) -> str:
    return f"{network}/{replica}"


def split_key(key: str) -> tuple[str, str | None]:
    """(network, replica or None) of a process key."""
    network, _, replica = key.partition("/")
    return network, replica or None


class NodeFailed(MlanetError):
    """A node process of the local federation exited, failed, or did not start in time; the
    text names the node and its log file."""


class NodeProcesses:
    """One ``mlanet node run`` process per network, logs in ``<root>/<network>/node.log``;
    or, for a network whose state is in PostgreSQL, several: its replicas, each known as
    ``<network>/<replica>`` (:func:`replica_key`), logs in ``<root>/<network>/<replica>.log``."""

    def __init__(self, federation: Federation, admin: ManagementEndpoint) -> None:
        self.federation = federation
        self.admin = admin
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, key: str) -> Path:
        network, replica = split_key(key)
        return self.federation.root / network / (f"{replica}.log" if replica else "node.log")

    def state_dir(self, key: str) -> Path:
        network, replica = split_key(key)
        state = self.federation.root / network / "state"
        return state / "replicas" / replica if replica else state

    def start(self, key: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the node of a network (``key`` its name), or one replica of it
        (``<network>/<replica>``)."""
        network, replica = split_key(key)
        log = self.log_path(key).open("ab")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlanet",
                "node",
                "run",
                "--config",
                str(self.federation.config_path(network)),
                *(("--replica", replica) if replica else ()),
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
        log.close()
        self.processes[key] = process
        return process

    def kill(self, network: str) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        process = self.processes.pop(network)
        process.kill()
        process.wait()

    def stop_all(self, within: float = 15.0) -> None:
        """SIGTERM every node (each stops within a few seconds); SIGKILL one that has not
        stopped after ``within`` seconds."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def lifecycle(self, network: str) -> Lifecycle | None:
        """The node process's own record of its phase; None before it wrote one (or when the
        one there is from an earlier process)."""
        process = self.processes.get(network)
        found = read_lifecycle(self.state_dir(network))
        if process is None or found is None or found.pid != process.pid:
            return None
        return found

    def check_running(self, networks: list[str] | None = None) -> None:
        """NodeFailed naming the first node process (of ``networks``) that has exited."""
        for network in sorted(networks or self.processes):
            process = self.processes.get(network)
            if process is not None and (code := process.poll()) is not None:
                state = self.lifecycle(network)
                why = f" ({state.describe(time.time())})" if state is not None else ""
                raise NodeFailed(
                    f"node {network} exited with code {code}{why}; see {self.log_path(network)}"
                )

    async def wait_ready(self, networks: list[str] | None = None, within: float = 60.0) -> None:
        """Wait until each node process says it started (its ``running`` in lifecycle.json,
        written once its queues are consumed, its links and its directory in place), or fail
        with NodeFailed naming the node, what it was doing and its log file."""
        waiting = set(networks or self.processes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while waiting:
            self.check_running(sorted(waiting))
            for network in sorted(waiting):
                state = self.lifecycle(network)
                if state is not None and state.phase is Phase.RUNNING:
                    waiting.discard(network)
            if waiting and loop.time() > deadline:
                network = sorted(waiting)[0]
                state = self.lifecycle(network)
                doing = state.describe(time.time()) if state is not None else "no sign of life"
                raise NodeFailed(
                    f"node {network} did not start within {within:g} s ({doing}); see "
                    f"{self.log_path(network)}"
                )
            if waiting:
                await asyncio.sleep(0.2)
