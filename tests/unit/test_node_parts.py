"""The node's parts and the directory keeper's view (``nodes/runtime/seams.py``): the keeper owns
what the node trusts as one frozen value; the node and its parts read it and never copy, overwrite
or hold one another."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlanet.nodes.config import load_config
from mlanet.nodes.directory.keeper import DirectoryKeeper
from mlanet.nodes.local.federation import build
from mlanet.nodes.runtime.node import Node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    build(tmp_path / "federation", prefix="unit")
    built = Node(load_config(tmp_path / "federation" / "casc" / "node.toml"))
    yield built
    built.store.close()
    built.quarantined.close()


def test_the_node_reads_what_it_trusts_from_the_keepers_one_view(node: Node) -> None:
    view = node.keeper.view
    assert node.view is view
    assert node.config is view.config
    assert node.directory is view.directory
    assert node.trust is view.trust
    assert node.key is view.key
    assert node.contact_points is view.contact_points
    assert view.held.directory.network("casc") is not None
    assert view.key.network == "casc"
    assert {peer.network for peer in view.config.peers} == set(view.directory.neighbours("casc"))


def test_the_view_cannot_be_changed_in_place_or_replaced_from_outside(node: Node) -> None:
    view = node.keeper.view
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.contact_points = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        node.config = view.config  # type: ignore[misc]
    with pytest.raises(AttributeError):
        node.keeper.view = view  # type: ignore[misc]
    assert node.keeper.view is view


def test_no_part_of_the_node_holds_the_node(node: Node) -> None:
    parts = (node.keeper, node.actions, node.outbox, node.receipts, node.links)
    for part in parts:
        held = vars(part).values() if hasattr(part, "__dict__") else ()
        assert all(value is not node for value in held), type(part).__name__


def test_a_keeper_alone_needs_no_node(tmp_path: Path) -> None:
    """The keeper is built from a config and a clock: tools and tests read its view without
    a running node."""
    build(tmp_path / "federation", prefix="unit")
    keeper = DirectoryKeeper(
        load_config(tmp_path / "federation" / "seajust" / "node.toml"), lambda: datetime.now(UTC)
    )
    assert keeper.view.config.network == "seajust"
    assert keeper.view.key.network == "seajust"
    assert keeper.closed() is None
