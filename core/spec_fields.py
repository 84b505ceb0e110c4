"""Names and values a task spec shares with the modules that run it: plain constants.

``core.models`` validates specs and front ends read them; the sandbox and the HTTP client run them.
Keeping what they share here lets models name a code task's limits and an HTTP task's methods
without importing RestrictedPython or httpx, so reading tasks (every list and show) loads neither.
"""

TASK_LIMIT_FIELDS = ("memory_limit_mb", "output_cap", "result_cap", "recursion_limit")
"""Limits a code task's spec may set for itself, each bounded by the setting ``max_<field>``."""

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
"""The request methods an HTTP task may use."""
