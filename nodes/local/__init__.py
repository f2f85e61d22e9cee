"""Networks on this machine: a local federation (``federation``), brokers of their own
(``brokers``) and the demo (``demo``)."""
