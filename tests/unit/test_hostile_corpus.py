"""The hostile corpus (tests/hostile/corpus.py) through the node's receiving pipeline, without a
broker: every entry the pipeline judges gets exactly its reason code, and the corpus is as
broad as it claims. The same entries go through a running node on the real broker in
tests/integration/test_hostile.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlanet.broker import Reason, decode_payload
from mlanet.broker.routing import Deliver
from mlanet.nodes.runtime.pipeline import Accepted
from tests.hostile.corpus import (
    CORPUS,
    HONEST,
    HOSTILE,
    RECEIVER,
    Deduplicated,
    Delivered,
    Hostile,
    Quarantined,
    Refused,
)
from tests.hostile.harness import Harness


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    made = Harness.create(tmp_path_factory.mktemp("hostile"))
    try:
        yield made
    finally:
        made.close()


_JUDGED = [entry for entry in CORPUS if not isinstance(entry.expect, Refused)]


def test_the_corpus_is_broad_and_its_names_are_unique() -> None:
    """At least 25 entries, across every layer the issue names, and each name once."""
    names = [entry.name for entry in CORPUS]
    assert len(names) == len(set(names))
    assert len(CORPUS) >= 25
    layers = Counter(entry.layer for entry in CORPUS)
    for layer in (
        "transport",
        "encoding",
        "json",
        "numbers",
        "unicode",
        "structure",
        "signatures",
        "replay",
        "hops",
        "authorisation",
        "sealing",
        "size",
    ):
        assert layers[layer] >= 2, layer
    reasons = {e.expect.reason for e in CORPUS if isinstance(e.expect, Quarantined)}
    assert len(reasons) >= 20
    for reason in (
        Reason.SEAL_DOES_NOT_OPEN,
        Reason.SEALED_FOR_OTHER_NETWORK,
        Reason.UNKNOWN_ENCRYPTION_KEY,
        Reason.ENCRYPTION_KEY_REVOKED,
    ):
        assert reason in reasons, reason


def test_the_scene_seals_with_the_keys_the_directory_lists(harness: Harness) -> None:
    """Every network of the federation seals with hpke:1, casc also lists its revoked hpke:2,
    and casc's keyring holds the private half of both."""
    scene = harness.scene
    assert set(scene.encryption) >= {RECEIVER, HOSTILE, HONEST}
    assert {key.key_id for key in scene.encryption.values()} == {"hpke:1"}
    assert [key.key_id for key in scene.encryption_keys[RECEIVER]] == ["hpke:1", "hpke:2"]
    assert scene.encryption_key(RECEIVER, "hpke:2").revoked_at is not None
    assert harness.keeper.view.seal_keys.key_ids == ("hpke:1", "hpke:2")
    assert scene.public_key(RECEIVER) != scene.public_key(HONEST)
    # the entries that send unsealed requests reach the step they attack only while casc takes
    # unsealed requests (corpus.py's docstring)
    assert not harness.config.policy.require_sealed


@pytest.mark.parametrize("entry", [e for e in _JUDGED if not e.big], ids=lambda e: e.name)
def test_each_entry_gets_its_outcome_from_the_pipeline(harness: Harness, entry: Hostile) -> None:
    attack = entry.build(harness.scene)
    for setup in attack.setup:
        harness.deliver(setup)
    verdict = harness.judge(attack.hostile)
    if isinstance(entry.expect, Quarantined) and not entry.node_only:
        assert verdict == entry.expect.reason
    elif isinstance(entry.expect, Deduplicated):
        assert isinstance(verdict, Accepted)
        assert verdict.duplicate is not None
    else:  # Delivered, or refused by the running node after the pipeline (node_only)
        assert isinstance(verdict, Accepted), verdict
        assert isinstance(verdict.routing, Deliver)
        assert verdict.duplicate is None
        assert isinstance(entry.expect, Delivered) or entry.node_only
        assert verdict.payload is not None
        # a sealed payload was opened here: its plaintext, not the bytes sent, was validated
        message = verdict.message
        assert (message.header.sealed is None) == (message.opened is None)
        if message.opened is not None:
            assert message.opened != message.payload_bytes
            assert verdict.payload == decode_payload(message)


def test_the_big_entry_is_refused_by_its_size_before_anything_is_parsed(
    harness: Harness, tmp_path: Path
) -> None:
    """128 MiB: the size cap refuses it without reading it (the battery sends it for real)."""
    (entry,) = [e for e in CORPUS if e.big]
    verdict = harness.judge(entry.build(harness.scene).hostile)
    assert isinstance(entry.expect, Quarantined)
    assert verdict == entry.expect.reason
