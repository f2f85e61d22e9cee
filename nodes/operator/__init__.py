"""What operators see of a node: ``mlanet status``, Prometheus metrics, the dashboard, alerts.

- ``status``: the node's status gathered (queues, links, quarantine, receipts, expiry), and
  its text; ``views``: the frozen values it is made of; ``alerts``: the thresholds it crosses;
- ``links``: what the running node tracks about its links (last success, oldest waiting);
- ``metrics``: the Prometheus registry fed by the observer seam and the status polls;
- ``flow``: recent message metadata for the dashboard;
- ``auth``: the operator login (scrypt password file, sessions, attempt limits);
- ``dashboard``: the HTML pages; ``server``: the aiohttp surface started with the node.
"""

from mlanet.nodes.operator.auth import hash_password, verify_password
from mlanet.nodes.operator.server import OperatorSurface
from mlanet.nodes.operator.status import NodeStatus, collect, render_text

__all__ = [
    "NodeStatus",
    "OperatorSurface",
    "collect",
    "hash_password",
    "render_text",
    "verify_password",
]
