"""Bring your history: readers of other trackers' stores (MLflow, TensorBoard) and the
writer that streams what they read into a steppe server; ``export`` takes it back out.

Nothing here is imported by ``import steppe``: the ``steppe import``/``steppe export``
commands load it. Every reader yields source-neutral records (``records``); only
``target`` writes to steppe, through the streaming client (WAL, exactly-once).
"""

from __future__ import annotations

__all__: list[str] = []
