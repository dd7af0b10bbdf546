"""How far each device's download of each artifact has come, as the server streamed it.

A device resumes a cut download from the offset it holds, so one stream rarely carries a whole
file. What the server records is ``reached``: the end of the bytes it has sent to the device
without a gap from byte 0. A stream that starts at or before it extends it; one that starts
beyond it (bytes the server never sent) does not. A download is delivered when it reaches the
artifact's size: only then does the device's benchmark of that file count for its hardware class
(:mod:`fleet_server.catalog.benchmarks`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleet_server.storage.db import Database
from fleet_server.storage.schema import downloads

__all__ = ["DownloadRow", "Downloads"]


@dataclass(frozen=True)
class DownloadRow:
    artifact: str
    reached: int
    total: int
    at: int


class Downloads:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def streamed(self, device_id: str, artifact: str, start: int, end: int, total: int) -> bool:
        """Record that bytes ``[start, end)`` of ``artifact`` (``total`` bytes) went to the
        device; return whether the device has now been sent the whole file without a gap."""
        try:
            return self._streamed(device_id, artifact, start, end, total)
        except IntegrityError:  # two first streams inserted at once: the other row is there now
            return self._streamed(device_id, artifact, start, end, total)

    def _streamed(self, device_id: str, artifact: str, start: int, end: int, total: int) -> bool:
        now = int(time.time())
        key = (downloads.c.device_id == device_id) & (downloads.c.artifact == artifact)
        column = downloads.c.reached
        with self._engine.begin() as conn:
            # One statement, so two streams of one device cannot lose each other's progress. A
            # changed total (another file under the name cannot happen: names are hashes) is
            # taken as it comes.
            extended = conn.execute(
                downloads.update()
                .where(key & (column >= start))
                .values(reached=sa.case((column < end, end), else_=column), total=total, at=now)
            ).rowcount
            if extended == 0:
                exists = conn.execute(sa.select(column).where(key)).first()
                if exists is None:
                    conn.execute(
                        downloads.insert().values(
                            device_id=device_id,
                            artifact=artifact,
                            reached=end if start == 0 else 0,
                            total=total,
                            at=now,
                        )
                    )
                else:
                    conn.execute(downloads.update().where(key).values(at=now))
            reached = conn.execute(sa.select(column).where(key)).scalar_one()
        return total > 0 and reached >= total

    def of_device(self, device_id: str, limit: int = 20) -> list[DownloadRow]:
        """The device's most recent downloads, newest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    downloads.c.artifact, downloads.c.reached, downloads.c.total, downloads.c.at
                )
                .where(downloads.c.device_id == device_id)
                .order_by(downloads.c.at.desc(), downloads.c.artifact)
                .limit(limit)
            ).all()
        return [DownloadRow(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]
