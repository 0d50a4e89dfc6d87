"""What mailbak pushed off-site: the tags it gives every restic snapshot it pushes
(docs/OFFSITE.md) and the list of those snapshots read back from restic.

``offsite.py`` (the off-site verbs) writes the tags and reads the list; ``repairer.py`` reads it
too, to find the off-site copy of a large damaged file. It lives below both so that neither
imports the other. restic is the only record of what is off-site: nothing here is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailbak.errors import UsageError
from mailbak.report import rfc3339
from mailbak.repository import Repository
from mailbak.restic import Restic, parse_time

#: The tag every snapshot mailbak pushes carries.
TAG = "mailbak"
#: Prefixes of the tags naming the repository, the local snapshot and the push time.
REPO_TAG, SNAPSHOT_TAG, PUSHED_TAG = "mailbak-repo=", "mailbak-snapshot=", "mailbak-pushed="


@dataclass(frozen=True)
class OffsiteSnapshot:
    """One restic snapshot mailbak pushed."""

    #: restic's snapshot ID and its short form.
    id: str
    short_id: str
    #: restic's time of the snapshot: the local snapshot's start time.
    time: datetime
    #: The local snapshot's name (tag mailbak-snapshot=), the repository tag, the push time.
    snapshot: str | None
    repo: str | None
    pushed: datetime | None
    hostname: str
    tags: tuple[str, ...]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> OffsiteSnapshot:
        """The snapshot as restic's ``snapshots --json`` describes it in ``doc``, with mailbak's
        tags read back."""
        tags = tuple(doc.get("tags") or ())

        def tag(prefix: str) -> str | None:
            return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)

        pushed = tag(PUSHED_TAG)
        return cls(
            id=doc["id"],
            short_id=doc.get("short_id") or doc["id"][:8],
            time=parse_time(doc.get("time", "")) or datetime.fromtimestamp(0, UTC),
            snapshot=tag(SNAPSHOT_TAG),
            repo=tag(REPO_TAG),
            pushed=parse_time(pushed) if pushed else None,
            hostname=doc.get("hostname", ""),
            tags=tags,
        )

    def as_json(self) -> dict[str, Any]:
        """The snapshot as JSON output shows it (offsite list, offsite prune): restic's IDs, the
        local snapshot's name, the times in RFC 3339 and the host."""
        return {
            "restic_snapshot": self.id,
            "short_id": self.short_id,
            "time": rfc3339(self.time.timestamp()),
            "snapshot": self.snapshot,
            "pushed": rfc3339(self.pushed.timestamp()) if self.pushed else None,
            "hostname": self.hostname,
        }


def repo_tag(repo: Repository) -> str:
    """The tag naming a mailbak repository in restic: its marker's ``id`` when it has one,
    else its creation time (which a copy or a move keeps), in tag-safe characters."""
    ident = repo.marker.get("id") or repo.marker.get("created")
    if not isinstance(ident, str) or not ident:
        raise UsageError(f"{repo.path}: the repository marker has no creation time to name it off-site")
    return REPO_TAG + re.sub(r"[^A-Za-z0-9._:+-]", "_", ident)


def pushed_snapshots(restic: Restic, *tags: str) -> list[OffsiteSnapshot]:
    """mailbak's snapshots in the restic repository carrying all ``tags`` (and ``mailbak``),
    oldest first."""
    docs = restic.run_json("snapshots", "--tag", ",".join((TAG, *tags)), what="snapshots") or []
    snaps = [OffsiteSnapshot.of(d) for d in docs]
    snaps.sort(key=lambda s: (s.time, s.pushed or s.time, s.id))
    return snaps
