"""The one family of errors a user can cause.

Every front end shows these as they are: the console in a notification, the command line on stderr
with exit code 2, the REST API as a 4xx JSON body. Anything else escaping ``core`` is a bug.
"""

from __future__ import annotations


class TaskmanError(Exception):
    """An error a person can act on; ``message`` says what went wrong and how to fix it."""

    title = "Error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message}


class InvalidSpec(TaskmanError):
    """A task spec (or another input) was refused; ``field`` names the offending field."""

    title = "Invalid input"
    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    def to_dict(self) -> dict:
        return {"error": "InvalidSpec", "field": self.field, "message": self.message}


class InvalidSetting(TaskmanError):
    """A setting (``core.config.Settings``) does not fit its type or bounds; ``origin`` names it where it was
    given: the environment variable, the key in the TOML file, or the keyword."""

    title = "Invalid setting"

    def __init__(self, origin: str, message: str) -> None:
        super().__init__(f"{origin}: {message}")
        self.origin = origin


class NotFound(TaskmanError):
    """The task or run named does not exist (or no longer does)."""

    title = "Not found"
    status = 404


class Conflict(TaskmanError):
    """The request is valid but the object's current state does not allow it."""

    title = "Not possible now"
    status = 409


class NoRedis(TaskmanError):
    """No Redis could be reached; the message says how to start or configure one.

    Raised as well, by every ``core.service.Service`` method, for redis-py's own words that Redis is away
    (refused, timed out, still loading its data, ...): then ``cause`` holds what redis-py said, so a front
    end can show it in its own sentence without knowing redis-py's exception types.
    """

    title = "Redis unavailable"
    status = 503

    def __init__(self, message: str, cause: str | None = None, *, answering: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.answering = answering
        """Redis answers, but refuses writes until an operator acts (its disk or its memory is full)."""

    @classmethod
    def unreachable(cls, error: BaseException, *, answering: bool = False) -> NoRedis:
        """The error front ends get for redis-py's ``error`` (a refused connection, a timeout, a Redis that
        cannot save to its disk: ``answering``, ...)."""
        if answering:
            return cls(f"{error} (nothing was changed; Redis takes writes again by itself once it can)", str(error),
                       answering=True)
        return cls(f"cannot reach Redis: {error}", str(error))


class Unauthorized(TaskmanError):
    """No credentials, or ones taskman does not know (a wrong, revoked or mistyped token)."""

    title = "Not signed in"
    status = 401


class Forbidden(TaskmanError):
    """The caller is known but its role does not allow this action; the message names the role needed."""

    title = "Not allowed"
    status = 403


class RateLimited(TaskmanError):
    """An API token made more changes than its rate allows; ``retry_after`` says in how many seconds."""

    title = "Too many changes"
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuditFull(TaskmanError):
    """The audit stream holds its most entries within the retention window; changes wait for them to age."""

    title = "Audit trail full"
    status = 503
