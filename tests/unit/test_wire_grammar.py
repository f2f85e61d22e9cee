"""The rules of the wire grammar live once, and each is pinned here: the identifier patterns
(``schemas/base.py``), a key's or a contact point's window at exactly its bounds
(``schemas/validity.py``), the names of queues, exchanges and link shovels built and read back
(``broker/topology.py``), and the quarantine headers (``broker/quarantine_headers.py``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from mlanet.broker import KeyRefused, Reason, RefusedMessage, TrustStore
from mlanet.broker.quarantine_headers import (
    DETAIL_KEPT,
    QuarantineHeaders,
    read_quarantine_headers,
)
from mlanet.broker.routing import RouteRule
from mlanet.broker.topology import (
    contact_point_of_deliver_queue,
    deliver_queue,
    inbox_exchange,
    link_name,
    out_queue,
    peer_inbox,
    peer_of_inbox_exchange,
    peer_of_link,
    peer_of_out_queue,
)
from mlanet.nodes.cli.directory import _show_network
from mlanet.nodes.config import NodeConfig, PeerConfig
from mlanet.nodes.directory.config import CoordinatorConfig
from mlanet.nodes.directory.coordinator import next_version
from mlanet.nodes.state.quarantine import entry_of
from mlanet.schemas.base import NETWORK_ID, NETWORK_ID_PATTERN
from mlanet.schemas.directory import ContactPointEntry, NetworkKey
from mlanet.schemas.validity import KeyState, in_window, key_state
from tests.unit.wirekit import CASC, SEAJUST, sample_directory

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    path for package in ("schemas", "broker", "nodes") for path in (ROOT / package).rglob("*.py")
]
MS = timedelta(milliseconds=1)
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)

NETWORK_IDS_OK = ["ab", "casc", "seajust", "a1", "x-y", "a" * 32, "ejn-2"]
NETWORK_IDS_BAD = ["", "a", "CASC", "1abc", "-ab", "a" * 33, "casc\n", "cas c", "casç", "ca_sc"]


def _source_lines_with(needle: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if needle in line
    ]


# --- the network-id pattern ----------------------------------------------------------------------
def test_the_network_id_pattern_is_written_once() -> None:
    found = _source_lines_with("[a-z][a-z0-9-]{1,31}")
    assert [where.partition(":")[0] for where in found] == ["schemas/base.py"], found


def _network_fields() -> list[tuple[str, type[BaseModel], dict[str, object], str]]:
    peer = {"user": "u", "password_file": "p"}
    node = {
        "signing_key": "k",
        "directory": "d",
        "state_dir": "s",
        "broker": {"vhost": "v", "user": "u", "password_file": "p"},
    }
    coordinator = {"keys": [{"key_id": "ed25519:1", "public_key": CASC.public_b64()}]}
    return [
        ("RouteRule.via", RouteRule, {}, "via"),
        ("PeerConfig.network", PeerConfig, peer, "network"),
        ("NodeConfig.network", NodeConfig, node, "network"),
        ("CoordinatorConfig.network", CoordinatorConfig, coordinator, "network"),
    ]


@pytest.mark.parametrize(("name", "model", "rest", "field"), _network_fields())
def test_every_network_id_field_follows_the_one_pattern(
    name: str, model: type[BaseModel], rest: dict[str, object], field: str
) -> None:
    for value in NETWORK_IDS_OK:
        assert NETWORK_ID.fullmatch(value), value
        assert getattr(model.model_validate({**rest, field: value}), field) == value, name
    for value in NETWORK_IDS_BAD:
        assert not NETWORK_ID.fullmatch(value), value
        with pytest.raises(ValidationError):
            model.model_validate({**rest, field: value})


def test_the_trust_store_refuses_network_ids_outside_the_pattern() -> None:
    for value in NETWORK_IDS_BAD:
        with pytest.raises(KeyRefused, match="network id"):
            TrustStore().add(value, "ed25519:1", CASC.public_b64())
    assert re.fullmatch(NETWORK_ID_PATTERN, "casc")


# --- a key's window, at exactly its bounds ---------------------------------------------------
EDGES = [
    (START - MS, KeyState.NOT_YET_VALID),
    (START, KeyState.VALID),
    (END - MS, KeyState.VALID),
    (END, KeyState.EXPIRED),
    (END + MS, KeyState.EXPIRED),
]


@pytest.mark.parametrize(("at", "state"), EDGES, ids=lambda v: str(v))
def test_a_key_is_valid_from_not_before_inclusive_to_not_after_exclusive(
    at: datetime, state: KeyState
) -> None:
    """PROTOCOL.md 14.3: at ``not_after`` exactly the key is no longer valid; every place that
    checks a key at a time says the same."""
    assert key_state(at, not_before=START, not_after=END, revoked=False) is state
    key = NetworkKey(
        key_id="ed25519:1", public_key=SEAJUST.public_b64(), not_before=START, not_after=END
    )
    assert key.state(at) is state
    assert key.valid_at(at) is (state is KeyState.VALID)
    assert in_window(at, START, END) is (state is KeyState.VALID)

    trust = TrustStore()
    trust.add("seajust", "ed25519:1", SEAJUST.public_b64(), not_before=START, not_after=END)
    signature = SEAJUST.sign(b"data")
    if state is KeyState.VALID:
        trust.verify("seajust", "ed25519:1", signature, b"data", reason=Reason.BAD_SIGNATURE, at=at)
    else:
        with pytest.raises(RefusedMessage) as refused:
            trust.verify(
                "seajust", "ed25519:1", signature, b"data", reason=Reason.BAD_SIGNATURE, at=at
            )
        assert refused.value.reason is Reason.EXPIRED

    network = sample_directory().directory.networks[0]
    shown = network.model_copy(update={"keys": [key]})
    assert f"key ed25519:1: {state.value}," in "\n".join(_show_network(shown, at))

    # the coordinator's next version prunes a key once it has expired, and only then
    directory = sample_directory().directory
    listed = key.model_copy(update={"key_id": "ed25519:9"})
    first = directory.networks[0].model_copy(update={"keys": [listed, *directory.networks[0].keys]})
    networks = [first, *directory.networks[1:]]
    kept = next_version(directory, at, timedelta(days=1), networks=networks).networks[0]
    assert (listed in kept.keys) is (state is not KeyState.EXPIRED)


@pytest.mark.parametrize("at", [START - MS, START, END, END + MS])
def test_a_revoked_key_is_revoked_whatever_the_time(at: datetime) -> None:
    assert key_state(at, not_before=START, not_after=END, revoked=True) is KeyState.REVOKED
    trust = TrustStore()
    trust.add("seajust", "ed25519:1", SEAJUST.public_b64(), not_before=START, revoked=True)
    with pytest.raises(RefusedMessage) as refused:
        trust.verify(
            "seajust", "ed25519:1", SEAJUST.sign(b"d"), b"d", reason=Reason.BAD_SIGNATURE, at=at
        )
    assert refused.value.reason is Reason.KEY_REVOKED


@pytest.mark.parametrize(("at", "state"), EDGES, ids=lambda v: str(v))
def test_a_contact_points_window_has_the_same_bounds(at: datetime, state: KeyState) -> None:
    cp = ContactPointEntry(id="kh-cp-1", country="KH", not_before=START, not_after=END)
    assert cp.active(at) is (state is KeyState.VALID)


# --- queue, exchange and shovel names --------------------------------------------------------
@pytest.mark.parametrize("peer", ["casc", "seajust", "a-b", "a" * 32])
def test_peer_names_are_built_and_read_back(peer: str) -> None:
    assert inbox_exchange(peer) == f"mlanet.inbox.from.{peer}"
    assert peer_inbox(peer) == f"mlanet.inbox.{peer}"
    assert out_queue(peer) == f"mlanet.out.{peer}"
    assert link_name(peer) == f"mlanet-link-{peer}"
    assert peer_of_inbox_exchange(inbox_exchange(peer)) == peer
    assert peer_of_out_queue(out_queue(peer)) == peer
    assert peer_of_link(link_name(peer)) == peer


@pytest.mark.parametrize("contact_point", ["uz-cp-1", "kh-gpo", "fr-a"])
def test_delivery_queue_names_are_built_and_read_back(contact_point: str) -> None:
    assert deliver_queue(contact_point) == f"mlanet.deliver.{contact_point}"
    assert contact_point_of_deliver_queue(deliver_queue(contact_point)) == contact_point


@pytest.mark.parametrize(
    "name",
    [
        "",
        "mlanet.inbox",
        "mlanet.inbox.from.",
        "mlanet.inbox.from.CASC",
        "mlanet.inbox.from.casc\n",
        "mlanet.inbox.from.casc.x",
        "mlanet.inbox.casc",
        "xmlanet.inbox.from.casc",
        "mlanet.out.casc",
        "mlanet.submit",
    ],
)
def test_a_name_that_is_no_inbox_exchange_names_no_peer(name: str) -> None:
    assert peer_of_inbox_exchange(name) is None


def test_other_names_are_not_read_as_ours() -> None:
    assert peer_of_out_queue("mlanet.out.") is None
    assert peer_of_out_queue("mlanet.out.Casc") is None
    assert peer_of_out_queue("mlanet.deliver.uz-cp-1") is None
    assert peer_of_link("mlanet-link-") is None
    assert peer_of_link("mlanet-link-casc/x") is None
    assert peer_of_link("other-link-casc") is None
    assert contact_point_of_deliver_queue("mlanet.deliver.casc") is None
    assert contact_point_of_deliver_queue("mlanet.out.uz-cp-1") is None


def test_names_are_built_only_in_the_topology() -> None:
    """No other module writes a name prefix by hand (documentation aside)."""
    for prefix in ('"mlanet.inbox.from.', '"mlanet.out.', '"mlanet.deliver.', '"mlanet-link-'):
        found = [
            where for where in _source_lines_with(prefix) if not where.startswith("broker/topo")
        ]
        assert found == [], (prefix, found)


# --- the quarantine headers --------------------------------------------------------------------
def test_quarantine_headers_are_read_as_written() -> None:
    told = QuarantineHeaders(
        reason="bad_signature",
        detail="refused at delivery by uz-cp-1",
        via=deliver_queue("uz-cp-1"),
        at="2026-03-02T09:30:05.000Z",
        whole_size=400_000,
        whole_sha256="ab" * 32,
    )
    assert read_quarantine_headers(told.headers()) == told
    entry = entry_of(b"body", "", None, told.headers(), now=0.0)
    assert (entry.reason, entry.detail, entry.via) == (told.reason, told.detail, told.via)
    assert (entry.truncated_from, entry.full_sha256) == (400_000, "ab" * 32)
    assert entry.at == datetime(2026, 3, 2, 9, 30, 5, tzinfo=UTC).timestamp()


def test_the_documented_header_names_are_the_ones_read() -> None:
    section = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    table = section[section.index("| `x-mlanet-reason`") : section.index("Other `x-mlanet-`")]
    documented = set(re.findall(r"`(x-mlanet-[a-z0-9-]+)`", table))
    written = set(QuarantineHeaders("r", "d", "v", "t", 1, "00" * 32).headers())
    assert documented == written


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, QuarantineHeaders()),
        ({"x-mlanet-reason": 7}, QuarantineHeaders()),
        (
            {"x-mlanet-reason": "Not A Code", "x-mlanet-detail": "x" * 900},
            QuarantineHeaders(reason="unknown", detail="x" * DETAIL_KEPT),
        ),
        ({"x-mlanet-truncated": "true", "x-mlanet-size": "²"}, QuarantineHeaders()),
        ({"x-mlanet-truncated": "yes", "x-mlanet-size": "12"}, QuarantineHeaders()),
        (
            {"x-mlanet-truncated": "true", "x-mlanet-size": "12", "x-mlanet-sha256": "zz"},
            QuarantineHeaders(whole_size=12),
        ),
        (
            {"x-mlanet-reason": b"oversized\xff", "x-mlanet-via": ["q"], "x-mlanet-at": None},
            QuarantineHeaders(reason="unknown"),
        ),
    ],
)
def test_hostile_quarantine_headers_read_as_absent_or_unknown(
    headers: dict[str, object], expected: QuarantineHeaders
) -> None:
    assert read_quarantine_headers(headers) == expected


def test_the_quarantine_header_names_are_written_once() -> None:
    for name in ("x-mlanet-reason", "x-mlanet-detail", "x-mlanet-via", "x-mlanet-at"):
        found = [w for w in _source_lines_with(f'"{name}"') if "quarantine_headers" not in w]
        assert found == [], (name, found)
