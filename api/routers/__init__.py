"""One router per resource: tasks, runs, logs, tokens, audit, metrics, health."""
