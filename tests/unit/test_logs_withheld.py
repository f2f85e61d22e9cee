"""Third-party log lines never carry a message body: aiormq prints a whole returned AMQP
message on one error path (found by the fault battery when queues were deleted under a node);
the node's logging keeps the line and withholds the message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CANARY = "CANARY-CASE-CONTENT-7f3a"

_SCRIPT = f"""
    import logging
    from aiormq.abc import DeliveredMessage
    from pamqp import commands as spec
    from pamqp.header import ContentHeader
    from mlanet.nodes.logs import configure_logging

    configure_logging("info")
    message = DeliveredMessage(
        delivery=spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="",
                                   routing_key="mlanet.out.casc"),
        header=ContentHeader(),
        body=b'{{"payload":"{CANARY}"}}',
        channel=None,
    )
    logging.getLogger("aiormq.channel").error("Unhandled message %r returning", message)
    logging.getLogger("aio_pika.robust_connection").warning("raw %s", b"{CANARY}")
    logging.getLogger("aio_pika.queue").warning("named %(body)s", {{"body": b"{CANARY}"}})
"""


def test_an_amqp_message_in_a_library_log_line_is_withheld() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert CANARY not in result.stderr + result.stdout
    assert "Unhandled message <DeliveredMessage withheld> returning" in result.stderr
    assert "raw <" in result.stderr
    assert "bytes withheld>" in result.stderr
    assert "named <" in result.stderr
