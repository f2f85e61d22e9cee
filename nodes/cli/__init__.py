"""The ``mlanet`` command (``app``) and its groups: directory, contact points, operator,
quarantine and journal commands, and what a contact point runs (``contact``, ``precheck``)."""
