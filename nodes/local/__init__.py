"""Networks on this machine: a local federation (``federation``), brokers of their own
(``brokers``), a federation where each network runs its own broker, linked over mutual TLS
(``own_brokers``), and the demo (``demo``)."""
