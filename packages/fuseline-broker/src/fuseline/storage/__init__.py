"""Runtime storage backends used by the Fuseline broker.

Shipped by the ``fuseline-broker`` distribution. The storage API is not
written yet; this module exists so that the distribution builds, installs
and imports.
"""

__all__: list[str] = []
