"""What watching a node costs on its hot path, per relayed message, and what a scrape costs.

For one relayed message the node calls the observer seam seven times: ``timing`` for verify,
validate, authorise, route and handle, ``received`` and ``forwarded``. Measured in one run:

- the fan-out with no observer (the seam's own cost);
- the fan-out with the operator surface's observers (the Prometheus step timings and the link
  tracker; the message counters and the flow log are read from the audit trail, off the hot
  path);
- the baseline: ``open_envelope`` of a ~1 KB signed message, the verify step every relayed
  message pays anyway;
- ``/metrics``: rendering the exposition of a node with two peers (``generate_latest``), and
  one status poll's gauge update, against the same baseline.

Each figure is the median over several repetitions of the per-call time of a timed loop after a
warm-up (``time.perf_counter_ns``). No broker needed. Run:
``.venv/bin/python bench/bench_operator.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from mlanet.broker import SigningKey, TrustStore, open_envelope, sign_message
from mlanet.broker.management import QueueFigures, ShovelState
from mlanet.broker.topology import link_name
from mlanet.nodes.config import NodeConfig
from mlanet.nodes.operator.links import LinkTracker
from mlanet.nodes.operator.metrics import NodeMetrics
from mlanet.nodes.operator.status import BrokerView, build_status
from mlanet.nodes.runtime.observe import Flow, Observers
from mlanet.schemas import Destination, FacilitationRequest, Header, Origin
from mlanet.schemas.base import format_timestamp
from mlanet.schemas.directory import Directory


def per_call_ns(fn: Callable[[], object], number: int, repeat: int) -> float:
    for _ in range(max(1, number // 10)):
        fn()
    timings = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        timings.append((time.perf_counter_ns() - start) / number)
    return statistics.median(timings)


def signed_message() -> tuple[bytes, TrustStore]:
    key = SigningKey.from_seed("seajust", "ed25519:1", bytes(range(32)))
    header = Header(
        kind="facilitation_request",
        message_id=str(uuid.uuid4()),
        origin=Origin(network="seajust", country="KH", contact_point="kh-cp-1"),
        destination=Destination(country="UZ"),
        created_at=datetime.now(UTC),
        key_id=key.key_id,
    )
    payload = FacilitationRequest(
        case_ref="KH-MLA-2020-0042",
        requesting_country="KH",
        requested_country="UZ",
        offence_categories=["drug_trafficking"],
        measures_sought=["evidence"],
        languages=["en"],
        summary="Benchmark text, no case content. " * 18,
    )
    trust = TrustStore()
    trust.add_signing_key(key)
    return sign_message(header, payload, key).to_bytes(), trust


def relay(observers: Observers, flow: Flow) -> None:
    """The observer calls the node makes for one relayed message."""
    observers.timing("verify", 0.00017)
    observers.timing("validate", 0.00002)
    observers.timing("authorise", 0.00001)
    observers.timing("route", 0.00001)
    observers.received("casc", flow)
    observers.forwarded("ejn", flow)
    observers.timing("handle", 0.0012)


def status_inputs(folder: Path) -> tuple[NodeConfig, Directory, BrokerView]:
    config = NodeConfig.model_validate(
        {
            "network": "casc",
            "signing_key": str(folder / "k"),
            "directory": str(folder / "d"),
            "state_dir": str(folder / "state"),
            "broker": {"vhost": "v", "user": "u", "password_file": str(folder / "p")},
            "peers": [
                {"network": peer, "user": "u", "password_file": str(folder / "p")}
                for peer in ("seajust", "ejn")
            ],
        }
    )
    networks = [
        {
            "id": network,
            "name": network,
            "members": [country],
            "contact_points": [{"id": f"{country.lower()}-cp-1", "country": country}],
            "keys": [{"key_id": "ed25519:1", "public_key": "A" * 43}],
            "broker": {"host": "127.0.0.1", "vhost": network},
        }
        for network, country in (("casc", "UZ"), ("seajust", "KH"), ("ejn", "FR"))
    ]
    directory = Directory.model_validate(
        {
            "version": 1,
            "issued_at": format_timestamp(datetime.now(UTC)),
            "networks": networks,
            "links": [["seajust", "casc"], ["casc", "ejn"]],
        },
        strict=False,
    )
    names = ["mlanet.inbox", "mlanet.submit", "mlanet.quarantine", "mlanet.out.seajust"]
    names += ["mlanet.out.ejn", *(f"mlanet.deliver.uz-cp-{i}" for i in range(8))]
    queues = {name: QueueFigures(name, 3, 3, 0, 1, 10.0, 10.0, 100) for name in names}
    shovels = {
        link_name(peer): ShovelState(link_name(peer), "running", None, None)
        for peer in ("seajust", "ejn")
    }
    return config, directory, BrokerView(queues, shovels, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    number, repeat = args.number, args.repeat

    wire, trust = signed_message()
    flow = Flow(str(uuid.uuid4()), "seajust", "facilitation_request", "UZ")
    bare = Observers()
    watched = Observers()
    metrics = NodeMetrics("casc", ("seajust", "ejn"))
    for observer in (metrics, LinkTracker(("seajust", "ejn"), started=time.time())):
        watched.add(observer)

    verify = per_call_ns(lambda: open_envelope(wire, trust), number, repeat)
    seam = per_call_ns(lambda: relay(bare, flow), number, repeat)
    observed = per_call_ns(lambda: relay(watched, flow), number, repeat)
    with TemporaryDirectory() as folder:
        config, directory, view = status_inputs(Path(folder))
        links = [
            LinkTracker(("seajust", "ejn"), started=time.time()).update(
                peer, shovel="running", reason=None, backlog=3, acked=100, now=time.time()
            )
            for peer in ("seajust", "ejn")
        ]
        status = build_status(config, directory, view, None, links, time.time())
        update = per_call_ns(lambda: metrics.update(status), number // 10, repeat)
    scrape = per_call_ns(metrics.exposition, number // 10, repeat)
    size = len(metrics.exposition())

    print(f"python {platform.python_version()} on {platform.machine()}; median of {repeat} loops")
    print(f"baseline  open_envelope (~{len(wire)} B, verify step)  {verify / 1000:8.1f} µs")
    print(f"seam      7 observer calls, no observer           {seam / 1000:8.1f} µs")
    print(
        f"watched   7 calls: timings, link tracker           {observed / 1000:8.1f} µs"
        f"   = {observed / verify:.2f}x the verify step"
    )
    print(
        f"poll      gauges from one status                   {update / 1000:8.1f} µs"
        f"   = {update / verify:.2f}x"
    )
    print(
        f"scrape    /metrics exposition ({size} B)         {scrape / 1000:8.1f} µs"
        f"   = {scrape / verify:.2f}x"
    )


if __name__ == "__main__":
    main()
