"""The directory a node trusts: the book of verified versions (``book``), the keeper that owns
the node's frozen view of it at run time (``keeper``), the coordinator that signs it
(``coordinator``), joining and provisioning a network (``joining``), and the contact points a
network vouches for (``contact_points``)."""
