"""``python -m mlanet``: the ``mlanet`` command."""

from mlanet.nodes.cli.app import main

main()
