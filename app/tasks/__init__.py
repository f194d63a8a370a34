"""The jobs Errand runs: built-in task types, a team's own, and its own upkeep."""

from __future__ import annotations

# Modules whose ``task_types`` every Errand offers; TASK_MODULES names more.
BUILT_IN = ("app.tasks.demo", "app.tasks.mail")
