"""The Fuseline broker: workflow schemas, runs and step assignments.

Shipped by the ``fuseline-broker`` distribution. The broker API is not
written yet; this module exists so that the distribution builds, installs
and imports.
"""

__all__: list[str] = []
