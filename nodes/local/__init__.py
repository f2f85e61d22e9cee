"""Networks on this machine: a local federation (``federation``), brokers of their own
(``brokers``), a federation where each network runs its own broker, linked over mutual TLS
(``own_brokers``), a RabbitMQ cluster of three nodes (``cluster``), and the demo
(``demo``)."""
