"""mlanet's runtime and operator surfaces: the node, the CLI, the local federation."""

__all__: list[str] = []
