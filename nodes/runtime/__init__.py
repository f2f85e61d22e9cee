"""The running node: it takes messages in, judges and routes them, forwards, delivers and
quarantines them (``actions``), keeps its own messages until they are receipted (``outbox``,
``receipts``), commits its state before it acks (``group_commit``) and keeps its links, doors
and broker topology in shape (``links``, ``doors``, ``reconcile``). ``node`` wires the parts;
they know each other through the protocols in ``seams``."""
