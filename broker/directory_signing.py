"""Signing and opening the federation directory, and networks' signed requests to the coordinator.

A signed directory is one JSON object (``mlanet.schemas.directory.SignedDirectory``)::

    {"document": B64U(directory JSON bytes), "key_id": "ed25519:<n>", "mlanet_directory": 1,
     "signature": B64U(Ed25519 over b"mlanet-v1:directory:" + document), "signer": "<coordinator>"}

Opening it follows the envelope's rule, verify first and parse second: the frame is parsed
strictly, the signature is checked over the exact ``document`` text with a key the caller trusts
as the coordinator's, and only then is the document parsed (strictly) and validated, every public
key it lists included. Refusals: ``unsigned_directory`` (no signature, an empty one, or a bare
directory), ``unknown_key`` (a key that is not the coordinator's), ``key_revoked`` / ``expired``
(a coordinator key outside its window), ``bad_signature`` (forged or altered), ``schema_invalid``
and the strict JSON codes, ``malformed_key`` / ``weak_key`` (a network or coordinator key the
trust store would refuse: ``broker/curve.py``), and the ``tls_*`` codes of a CA certificate it
lists that no client could use (``broker/directory_tls.py``).

A directory that opens can therefore always be turned into trust stores: nothing downstream
(persisting it, passing it on, deriving the node's trust) meets a key it cannot use. The
coordinator's :func:`sign_directory` refuses such a directory too.

Requests (join, key rotation) are signed the same way with the context ``mlanet-v1:request:``;
the coordinator decides which keys must have signed (the new key always, the current key too
for a rotation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlanet.broker.directory_tls import check_listed_certificates
from mlanet.broker.errors import KeyRefused, Reason, RefusedMessage, error_location
from mlanet.broker.keys import SigningKey, TrustStore, b64u_decode, b64u_encode
from mlanet.broker.seal import parse_encryption_key
from mlanet.broker.strictjson import canonical_bytes, loads_strict
from mlanet.schemas.directory import (
    Directory,
    JoinRequest,
    KeyRotationRequest,
    SignedDirectory,
    SignedRequest,
    SignedRequestSignature,
)

__all__ = [
    "DIRECTORY_CONTEXT",
    "MAX_SIGNED_DIRECTORY_BYTES",
    "REQUEST_CONTEXT",
    "Request",
    "VerifiedDirectory",
    "check_listed_keys",
    "coordinator_trust",
    "open_directory",
    "open_request",
    "request_signed_by",
    "sign_directory",
    "sign_request",
]

DIRECTORY_CONTEXT = b"mlanet-v1:directory:"
REQUEST_CONTEXT = b"mlanet-v1:request:"
MAX_SIGNED_DIRECTORY_BYTES = 256 * 1024
_DOCUMENT_DEPTH = 8
_FRAME_KEYS = {"mlanet_directory", "signer", "key_id", "document", "signature"}

Request = JoinRequest | KeyRotationRequest


@dataclass(frozen=True)
class VerifiedDirectory:
    """A directory whose coordinator signature verified, with the exact signed form."""

    directory: Directory
    signed: SignedDirectory

    @property
    def version(self) -> int:
        return self.directory.version

    @property
    def digest(self) -> str:
        """B64U SHA-256 of the signed document: equal exactly when the content is equal."""
        return b64u_encode(hashlib.sha256(self.signed.document.encode("ascii")).digest())

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.signed.model_dump(mode="json"))


def _validation_detail(exc: ValidationError) -> str:
    return ", ".join(
        f"{error_location(err)}:{err['type']}"
        for err in exc.errors(include_input=False, include_url=False)[:5]
    )


def check_listed_keys(directory: Directory) -> None:
    """Raise RefusedMessage (``malformed_key`` or ``weak_key``) unless every public key the
    directory lists, its networks' and its coordinator's, enters a trust store: the same check
    (:meth:`mlanet.broker.keys.TrustStore.add_listed`) that the node's trust stores make later."""
    listed = [
        ("coordinator", directory.coordinator or "", key) for key in directory.coordinator_keys
    ]
    listed += [
        ("network", network.id, key) for network in directory.networks for key in network.keys
    ]
    for role, owner, key in listed:
        try:
            TrustStore().add_listed(owner, key)
        except KeyRefused as refused:
            # owner and key id are schema-checked identifiers; the detail names the defect only
            raise RefusedMessage(
                refused.reason, f"{role} {owner} key {key.key_id}: {refused.detail}"
            ) from None
    for network in directory.networks:  # and every encryption key an origin would seal with
        for sealing in network.encryption_keys:
            try:
                parse_encryption_key(sealing.public_key)
            except KeyRefused as refused:
                raise RefusedMessage(
                    refused.reason,
                    f"network {network.id} encryption key {sealing.key_id}: {refused.detail}",
                ) from None


def sign_directory(directory: Directory, key: SigningKey) -> VerifiedDirectory:
    """The coordinator signs ``directory`` with its key (which must be the directory's
    coordinator's); a directory listing a key no node could use is refused (RefusedMessage)."""
    if directory.coordinator != key.network:
        raise ValueError("the directory names another coordinator than the signing key's")
    check_listed_keys(directory)
    check_listed_certificates(directory)
    document = b64u_encode(
        canonical_bytes(directory.model_dump(mode="json", exclude_none=True))
    ).encode("ascii")
    signature = b64u_encode(key.sign(DIRECTORY_CONTEXT + document))
    signed = SignedDirectory(
        mlanet_directory=1,
        signer=key.network,
        key_id=key.key_id,
        document=document.decode("ascii"),
        signature=signature,
    )
    return VerifiedDirectory(directory, signed)


def coordinator_trust(
    coordinator: str, pinned: Iterable[tuple[str, str]], held: Directory | None = None
) -> TrustStore:
    """The keys a node accepts as the coordinator's: the ones pinned in its configuration and
    the coordinator keys of the directory it holds; a key the held directory lists keeps that
    listing's window and revocation."""
    trust = TrustStore()
    for key_id, public_key in pinned:
        trust.add(coordinator, key_id, public_key)
    if held is not None and held.coordinator == coordinator:
        for key in held.coordinator_keys:
            trust.add_listed(coordinator, key)
    return trust


def _frame(data: bytes | SignedDirectory) -> dict[str, Any]:
    if isinstance(data, SignedDirectory):
        return data.model_dump(mode="json")
    value = loads_strict(data, max_bytes=MAX_SIGNED_DIRECTORY_BYTES, max_depth=_DOCUMENT_DEPTH)
    if not isinstance(value, dict):
        raise RefusedMessage(Reason.BAD_ENVELOPE, "a signed directory is a JSON object")
    return value


def open_directory(
    data: bytes | SignedDirectory, trust: TrustStore, *, now: datetime
) -> VerifiedDirectory:
    """Verify the coordinator's signature, then parse the directory; or raise RefusedMessage."""
    frame = _frame(data)
    if "mlanet_directory" not in frame or not frame.get("signature"):
        raise RefusedMessage(Reason.UNSIGNED_DIRECTORY, "the directory carries no signature")
    if set(frame) != _FRAME_KEYS:
        raise RefusedMessage(
            Reason.BAD_ENVELOPE, "a signed directory holds exactly " + ",".join(sorted(_FRAME_KEYS))
        )
    signer, key_id = frame["signer"], frame["key_id"]
    document, signature = frame["document"], frame["signature"]
    if not all(isinstance(v, str) for v in (signer, key_id, document, signature)):
        raise RefusedMessage(Reason.SCHEMA_INVALID, "signer, key_id, document and signature")
    try:
        trust.verify(
            signer,
            key_id,
            b64u_decode(signature),
            DIRECTORY_CONTEXT + document.encode("ascii", errors="replace"),
            reason=Reason.BAD_SIGNATURE,
            at=now,
        )
    except RefusedMessage as refused:
        if refused.reason is Reason.UNKNOWN_KEY:
            raise RefusedMessage(
                Reason.UNKNOWN_KEY, f"{signer} {key_id} is not a coordinator key"
            ) from None
        raise
    try:
        signed = SignedDirectory.model_validate(frame)
        raw = b64u_decode(signed.document)
        loads_strict(raw, max_bytes=MAX_SIGNED_DIRECTORY_BYTES, max_depth=_DOCUMENT_DEPTH)
        directory = Directory.model_validate_json(raw)
    except ValidationError as exc:
        raise RefusedMessage(
            Reason.SCHEMA_INVALID, f"directory: {_validation_detail(exc)}"
        ) from None
    if directory.coordinator != signer:
        raise RefusedMessage(Reason.UNAUTHORISED, f"signed by {signer}, not by its coordinator")
    check_listed_keys(directory)
    check_listed_certificates(directory)
    return VerifiedDirectory(directory, signed)


# --- requests to the coordinator -----------------------------------------------------------------


def sign_request(request: Request, keys: Iterable[SigningKey]) -> SignedRequest:
    """Sign a join or key rotation request with each of ``keys`` (the network's)."""
    network = request.network.id if isinstance(request, JoinRequest) else request.network
    body = b64u_encode(canonical_bytes(request.model_dump(mode="json", exclude_none=True)))
    signatures = []
    for key in keys:
        if key.network != network:
            raise ValueError("a request is signed by the requesting network's keys")
        signature = b64u_encode(key.sign(REQUEST_CONTEXT + body.encode("ascii")))
        signatures.append(SignedRequestSignature(key_id=key.key_id, signature=signature))
    return SignedRequest(mlanet_request=1, network=network, request=body, signatures=signatures)


def open_request(data: bytes) -> tuple[Request, SignedRequest]:
    """Parse a signed request strictly (its signatures are checked by :func:`request_signed_by`)."""
    value = loads_strict(data, max_bytes=MAX_SIGNED_DIRECTORY_BYTES, max_depth=4)
    try:
        signed = SignedRequest.model_validate(value)
        raw = b64u_decode(signed.request)
        inner = loads_strict(raw, max_bytes=65536, max_depth=_DOCUMENT_DEPTH)
        kind = inner.get("type") if isinstance(inner, dict) else None
        model: type[Request] = JoinRequest if kind == "join" else KeyRotationRequest
        request = model.model_validate_json(raw)
    except ValidationError as exc:
        raise RefusedMessage(Reason.SCHEMA_INVALID, f"request: {_validation_detail(exc)}") from None
    network = request.network.id if isinstance(request, JoinRequest) else request.network
    if network != signed.network:
        raise RefusedMessage(Reason.UNAUTHORISED, "the request is for another network")
    return request, signed


def request_signed_by(signed: SignedRequest, key_id: str, public_key: str) -> None:
    """Raise RefusedMessage unless ``signed`` carries a valid signature by this key."""
    for entry in signed.signatures:
        if entry.key_id == key_id:
            trust = TrustStore()
            trust.add(signed.network, key_id, public_key)
            trust.verify(
                signed.network,
                key_id,
                b64u_decode(entry.signature),
                REQUEST_CONTEXT + signed.request.encode("ascii"),
                reason=Reason.BAD_SIGNATURE,
            )
            return
    raise RefusedMessage(Reason.UNKNOWN_KEY, f"the request is not signed by {key_id}")
