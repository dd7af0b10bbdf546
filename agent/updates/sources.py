"""Where an artifact's bytes come from: a mirror the server names (a CDN, a caching proxy), the
fleet's object store (a short-lived URL the server gives over mTLS at download time), and the
server's own gRPC stream, in that order. Each resumes from what the ones before it left.

None of the HTTP sources is trusted: the updater hashes every byte against the signed manifest.
When what they gave does not verify, the artifact is fetched from the server alone from then on
(in this process), and the failure is a retry, never a refusal of the release: a hostile mirror
can slow a device down, not make it refuse a good model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, DownloadError
from agent.updates.http_fetch import HttpSource, fetch

__all__ = ["DownloadSources"]

log = logging.getLogger(__name__)
_MAX_DISTRUSTED = 1024


class _Counting:
    """A sink that counts what went through it."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self.sink.write(data)
        self.written += len(data)


@dataclass
class DownloadSources:
    """The sources of one agent's downloads (``client`` is its DeviceClient)."""

    client: Any
    http: HttpSource = field(default_factory=HttpSource)
    mirror_url: str = ""  # from the check-in answer; "{artifact}" = the artifact id
    distrusted: set[str] = field(default_factory=set)

    def distrust(self, artifact_id: str) -> None:
        """What the HTTP sources gave of this artifact did not verify: the server alone, now."""
        if len(self.distrusted) >= _MAX_DISTRUSTED:
            self.distrusted.clear()
        self.distrusted.add(artifact_id)

    def _urls(self, artifact_id: str) -> Iterator[tuple[str, str]]:
        """The HTTP sources in order; the store's URL is asked for only when its turn comes
        (a presigned URL's lifetime starts when it is given)."""
        if artifact_id in self.distrusted:
            return
        if self.mirror_url:
            yield "mirror", self.mirror_url.replace("{artifact}", artifact_id)
        try:
            found = self.client.download_url(artifact_id)
        except AgentError as exc:  # the stream below says what is wrong with the server
            log.debug("no download URL for %s: %s", artifact_id[:12], exc)
            found = None
        if found:
            yield "object store", found

    def transfer(
        self,
        artifact_id: str,
        *,
        offset: int,
        size: int,
        sink: Any,
        deadline_s: float,
        max_bytes_per_s: int = 0,
    ) -> bool:
        """Write the artifact from ``offset`` into ``sink``; True when an HTTP source gave
        any of it (the caller distrusts them if the whole does not verify).

        Raises:
            DownloadError, ManifestError: as DeviceClient.download, when the server's stream,
                the last source, fails too.
        """
        counted = _Counting(sink)
        # A download already whole (a restart after its last byte) needs no source at all.
        for name, url in self._urls(artifact_id) if offset < size else iter(()):
            try:
                start = offset + counted.written
                fetch(
                    url, offset=start, expected_size=size, sink=counted,
                    source=self.http, deadline_s=deadline_s, max_bytes_per_s=max_bytes_per_s,
                )  # fmt: skip
                log.info("downloaded %s from the %s (bytes %d-%d)", artifact_id[:12], name,
                         start, size)  # fmt: skip
                return True
            except DownloadError as exc:
                log.warning(
                    "download of %s from the %s stopped at byte %d: %s; trying the next source",
                    artifact_id[:12], name, offset + counted.written, exc,
                )  # fmt: skip
        http_bytes = counted.written
        self.client.download(
            artifact_id,
            offset=offset + counted.written,
            expected_size=size,
            sink=counted,
            deadline_s=deadline_s,
            max_bytes_per_s=max_bytes_per_s,
        )
        return http_bytes > 0
