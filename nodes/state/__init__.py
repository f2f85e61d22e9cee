"""What a node keeps on disk, in its state folder: dedupe and outbox state with the signed,
hash-chained journal of every fact (``store``, ``journal``, ``schema`` for versioned upgrades,
``audit`` for reading and verifying it), the quarantine (``quarantine_store``, ``quarantine``)
and the folder's own permissions (``state_dir``)."""
