"""The six degradation task families of the all-in-one protocol (DESIGN.md §4).

The order is part of the model's contract: the DAG task embeddings and the task classifier index
tasks by their position in :data:`TASKS`.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("gaussian", "complex", "blur", "sr", "inpaint", "bandmiss")
"""Task family names, in embedding order."""


def task_index(name: str) -> int:
    """Return the position of task family ``name`` in :data:`TASKS`.

    Raises:
        ValueError: ``name`` is not one of the six families (the message lists them).
    """
    try:
        return TASKS.index(name)
    except ValueError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
