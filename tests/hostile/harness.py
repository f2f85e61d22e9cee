"""The receiving node's pipeline without a broker: a federation written to disk (keys, signed
directory, configs), ``casc``'s effective config, trust and private encryption keys (its
keyring, loaded from beside its signing key) as its node would hold them, and a fresh SQLite
store. ``judge`` runs one publication through ``mlanet.nodes.runtime.pipeline.receive`` and says
what the node would do with it. Used by the unit tests and ``bench/bench_hostile.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlanet.broker import Reason, RefusedMessage, load_signing_key
from mlanet.broker.directory_signing import sign_directory
from mlanet.broker.keys import b64u_decode
from mlanet.broker.routing import Refuse
from mlanet.broker.seal import generate_seal_key_files, seal_key_files
from mlanet.broker.transport import CONTENT_TYPE, inbox_exchange
from mlanet.nodes.config import NodeConfig, load_config
from mlanet.nodes.directory.keeper import DirectoryKeeper
from mlanet.nodes.local.federation import Federation, build
from mlanet.nodes.runtime.pipeline import Accepted, Properties, receive
from mlanet.nodes.state.store import Store
from mlanet.schemas.directory import Directory, NetworkKey, SignedDirectory
from mlanet.schemas.sealing import EncryptionKey
from tests.hostile.corpus import (
    HOSTILE,
    RECEIVER,
    REVOKED,
    REVOKED_ENCRYPTION_KEY,
    ROTATED_OUT,
    Scene,
    restrict_kinds,
)
from tests.hostile.peer import Publication

__all__ = ["Harness", "properties_of", "rotate"]


def rotate(federation: Federation, now: datetime) -> None:
    """Issue the next directory version, signed by the coordinator, in which seajust also lists
    its pre-rotation keys: ``ROTATED_OUT`` (valid until yesterday) and ``REVOKED`` (revoked
    yesterday), and casc an encryption key ``REVOKED_ENCRYPTION_KEY`` revoked yesterday, whose
    private key file is written beside casc's others (a node keeps a revoked key's file until
    its operator removes it). Nodes started afterwards take it (the newest valid directory
    wins)."""
    path = federation.root / "directory.json"
    signed = SignedDirectory.model_validate_json(path.read_bytes())
    current = Directory.model_validate_json(b64u_decode(signed.document))
    networks = []
    for entry in current.networks:
        if entry.id == HOSTILE:
            old = [
                NetworkKey(
                    key_id=ROTATED_OUT.key_id,
                    public_key=ROTATED_OUT.public_b64(),
                    not_before=now - timedelta(days=90),
                    not_after=now - timedelta(days=1),
                ),
                NetworkKey(
                    key_id=REVOKED.key_id,
                    public_key=REVOKED.public_b64(),
                    not_before=now - timedelta(days=90),
                    revoked_at=now - timedelta(days=1),
                ),
            ]
            entry = entry.model_copy(update={"keys": [*entry.keys, *old]})
        if entry.id == RECEIVER:
            folder = federation.root / RECEIVER
            private, public = seal_key_files(folder, RECEIVER, REVOKED_ENCRYPTION_KEY)
            if not private.exists():
                generate_seal_key_files(folder, RECEIVER, REVOKED_ENCRYPTION_KEY)
            revoked = EncryptionKey(
                key_id=REVOKED_ENCRYPTION_KEY,
                public_key=json.loads(public.read_text(encoding="ascii"))["public_key"],
                not_before=now - timedelta(days=90),
                revoked_at=now - timedelta(days=1),
            )
            entry = entry.model_copy(update={"encryption_keys": [*entry.encryption_keys, revoked]})
        networks.append(entry)
    following = current.model_copy(
        update={"version": current.version + 1, "issued_at": now, "networks": networks}
    )
    coordinator = load_signing_key(federation.coordinator_key())
    path.write_bytes(sign_directory(following, coordinator).to_bytes())


def properties_of(publication: Publication) -> Properties:
    """The properties the pipeline checks, as the node's transport would read them."""
    given = publication.properties
    return Properties(
        content_type=given.get("content_type", CONTENT_TYPE),
        content_encoding=given.get("content_encoding"),
        expires=given.get("expiration") is not None,
    )


@dataclass
class Harness:
    federation: Federation
    keeper: DirectoryKeeper
    store: Store
    scene: Scene

    @classmethod
    def create(cls, root: Path, *, prefix: str = "hostile") -> Harness:
        federation = build(root / "federation", prefix=prefix)
        restrict_kinds(federation.config_path(RECEIVER))
        now = datetime.now(UTC)
        rotate(federation, now)
        keeper = DirectoryKeeper(load_config(federation.config_path(RECEIVER)), lambda: now)
        scene = Scene.of(federation, now)
        return cls(federation, keeper, Store(root / "store" / "node.sqlite3"), scene)

    @property
    def config(self) -> NodeConfig:
        return self.keeper.view.config

    def judge(self, publication: Publication) -> Reason | Accepted:
        """The reason the node would quarantine it with, or what the pipeline accepted."""
        sender = publication.as_network or HOSTILE
        exchange = publication.exchange or inbox_exchange(sender)
        try:
            accepted = receive(
                publication.body,
                exchange,
                config=self.config,
                trust=self.keeper.view.trust,
                directory=self.keeper.view.directory,
                store=self.store,
                now=self.scene.now,
                properties=properties_of(publication),
                keyring=self.keeper.view.seal_keys,
            )
        except RefusedMessage as refused:
            return refused.reason
        if isinstance(accepted.routing, Refuse):
            return accepted.routing.reason
        return accepted

    def deliver(self, publication: Publication) -> Accepted:
        """Judge a message that must be accepted, and record it as the node would."""
        verdict = self.judge(publication)
        if not isinstance(verdict, Accepted):
            raise AssertionError(f"expected the setup message to be accepted, got {verdict}")
        header = verdict.message.header
        self.store.remember(
            header.origin.network,
            header.message_id,
            verdict.message.content_sha256,
            "delivered",
        )
        return verdict

    def close(self) -> None:
        self.store.close()
