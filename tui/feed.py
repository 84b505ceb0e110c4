"""What the console's status line shows, read in one go by a thread worker (``MainScreen.poll_status``).

Nothing here touches a widget: the screen turns what this returns into UI updates on the UI thread.
Runs per minute and failures in the last hour are not read here: they are counted from the events
stream the main screen follows anyway (``core.metrics.Activity``).
"""

from __future__ import annotations

import time

from core.service import Service


def status(service: Service) -> dict:
    """What the status line shows, read in one round trip (``Service.status``)."""
    read = service.status()
    reports = read["isolation"]
    missing = sorted({wall for report in reports.values() for wall in report.get("missing", ())})
    walls = "" if not reports else ("jail ●" if not missing else "walls ✘ " + ",".join(missing))
    lost = read["data_lost"]
    if lost and time.time() - lost["at"] < 86400:
        walls = f"REDIS LOST ITS DATA {time.strftime('%m-%d %H:%M', time.localtime(lost['at']))}   {walls}".strip()
    if read["refuses_writes"]:
        walls = f"REDIS REFUSES WRITES: {read['refuses_writes']}   {walls}".strip()
    return {"ok": True, "due": read["due"], "workers": read["workers"], "queued": read["queued"],
            "scheduler": read["scheduler"], "walls": walls}
