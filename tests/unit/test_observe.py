"""The observer seam: every point reaches every observer, and a failing one stops nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from structlog.testing import capture_logs

from mlanet.nodes.runtime.observe import Flow, Observer, Observers
from mlanet.schemas import Destination, Header, Origin


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def received(self, sender: str, flow: Flow) -> None:
        self.calls.append(("received", sender, flow.message_id))

    def refused(self, reason: str, via: str, flow: Flow | None) -> None:
        self.calls.append(("refused", reason, via, flow))

    def timing(self, step: str, seconds: float) -> None:
        self.calls.append(("timing", step, seconds))


class Broken(Observer):
    def received(self, sender: str, flow: Flow) -> None:
        raise RuntimeError("observer defect")


FLOW = Flow("m-1", "seajust", "facilitation_request", "UZ")


def test_every_observer_hears_every_point_in_order() -> None:
    first, second = Recorder(), Recorder()
    observers = Observers()
    observers.add(first)
    observers.add(second)
    observers.received("casc", FLOW)
    observers.refused("bad_signature", "mlanet.inbox.from.casc", None)
    observers.timing("verify", 0.001)
    expected = [
        ("received", "casc", "m-1"),
        ("refused", "bad_signature", "mlanet.inbox.from.casc", None),
        ("timing", "verify", 0.001),
    ]
    assert first.calls == expected
    assert second.calls == expected


def test_a_failing_observer_is_logged_and_the_others_still_hear() -> None:
    recorder = Recorder()
    observers = Observers()
    observers.add(Broken())
    observers.add(recorder)
    with capture_logs() as logs:
        observers.received("casc", FLOW)
    assert recorder.calls == [("received", "casc", "m-1")]
    assert [entry["event"] for entry in logs] == ["observer_failed"]
    assert logs[0]["observer"] == "Broken"
    assert logs[0]["point"] == "received"
    assert logs[0]["error_type"] == "RuntimeError"
    # where: the innermost frame of mlanet's own code, and the observer's frame that raised
    assert (logs[0]["file"], logs[0]["function"]) == ("nodes/runtime/observe.py", "_each")
    assert isinstance(logs[0]["line"], int)
    assert logs[0]["raised_in"].startswith("tests/unit/test_observe.py:")
    assert logs[0]["raised_in"].endswith(" received")
    assert "observer defect" not in str(logs)


def test_a_removed_observer_hears_nothing_more() -> None:
    recorder = Recorder()
    observers = Observers()
    observers.add(recorder)
    observers.remove(recorder)
    observers.received("casc", FLOW)
    assert recorder.calls == []


def test_flow_carries_metadata_only() -> None:
    header = Header(
        kind="facilitation_request",
        message_id="0b7e3f9e-8a57-4d4f-9d8e-1f0d1c2b3a49",
        origin=Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
        destination=Destination(country="UZ"),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        key_id="ed25519:1",
    )
    flow = Flow.of(header)
    assert flow == Flow(header.message_id, "seajust", "facilitation_request", "UZ")
