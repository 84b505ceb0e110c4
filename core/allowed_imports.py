"""The modules code tasks may import by default: one constant, importable without pydantic.

``core.config`` offers it as the default of ``sandbox_imports``; ``core.sandbox`` (which runs in the
jail's template, kept small so that forking a run stays cheap) uses it without loading the settings.
"""

SANDBOX_IMPORTS: tuple[str, ...] = (
    "math", "json", "datetime", "re", "random", "statistics", "itertools", "functools",
    "collections", "decimal", "fractions", "string",
)
"""The modules code tasks may import unless ``sandbox_imports`` says otherwise."""
