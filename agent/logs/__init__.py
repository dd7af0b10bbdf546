"""The agent's recent log, for an operator who asks for it (``edgefleet devices log``).

- ``ring``: ``RecentLog``, the logging handler that keeps the last records of this run in
  memory, bounded by count and bytes.
- ``tail``: the tail file in the state dir: this run's records appended as they are logged, the
  run before kept for the run after (a crash-looping agent's log survives it).
- ``redact``: secrets out of a record before it is kept anywhere.
- ``upload``: the records a request wants, in bounded parts (pure).
"""

from agent.logs.ring import Kept, RecentLog
from agent.logs.tail import TailFile, open_tail
from agent.logs.upload import parts, select

__all__ = ["Kept", "RecentLog", "TailFile", "open_tail", "parts", "select"]
