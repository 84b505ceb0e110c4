"""Unexpected errors in the console are shown, and the console carries on.

Textual's answer to an exception in a message handler is to stop that widget's message loop and exit
the app. The console is a window on the stack: under ``taskman up`` its exit used to take Redis, the
workers and the scheduler down with it, and a bug triggered by stored data (a name that broke a widget)
then crashed every later start. So the console's app, screens and own widgets mix in :class:`CarriesOn`:
an exception while handling a message (a key, an action, a message from a reader thread) is handed to
``TaskmanApp.report_error``, which shows it in a notification, and the loop goes on.

A worker's error takes Textual's own road to the app: workers keep ``exit_on_error`` on (its default), so
Textual hands the error to ``App._handle_exception``, which ``TaskmanApp`` turns into ``report_error``.
That one place sees the errors of every worker, whichever screen or widget started it and whether or not
that node handles ``Worker.StateChanged`` (a message that does not bubble); ``exit_on_error=False`` would
silence them, so the console never uses it (``tests/test_boundaries.py``).
"""

from __future__ import annotations

from asyncio import CancelledError


class CarriesOn:
    """Mixin for a Textual ``MessagePump`` (app, screen, widget): its handlers' errors are reported, not fatal."""

    async def _dispatch_message(self, message) -> None:
        try:
            await super()._dispatch_message(message)  # type: ignore[misc]
        except CancelledError:
            raise
        except Exception as error:
            report = getattr(self.app, "report_error", None)  # type: ignore[attr-defined]
            if report is None:
                raise
            report(error)
