"""The lifecycle of the models on this device, as a pure state machine.

Per model name, a release goes through these states::

    absent --offer--> TRIAL --activated--> WATCHED --window passed--> TRUSTED
                        |                     |
                        | crashed the agent   | judged bad, or the agent died abnormally
                        | max times loading   | while it loaded or served, max times
                        v                     v
                     REFUSED  <---------- ROLLED BACK (the last-known-good serves again)

TRIAL covers download, verification, load and smoke test; nothing of it is in the journal but
a "loading" marker while it loads and runs its smoke test. WATCHED is an active release in its
health window with a last-known-good to return to (a first install has none: it is trusted at
once). A refusal names one (model name, sha256): never another model, and the same bytes under
a new version stay refused until an operator clears it.

What counts as a crash (see docs/rollouts.md): the journal records each run of the agent (the
boot it ran in, whether it stopped through its own code, which model was loading and which
were serving). At the next start, a run that ended without its clean-stop marker in the same
boot is an abnormal death (SIGKILL, SIGSEGV, SIGBUS, the OOM killer, systemd's watchdog) and
counts against the releases it was loading or serving that are still on trial or watched.
A death while a release was loading counts against that release only. Clean stops, start
failures before a watched model loaded, a device that rebooted without stopping the agent (a
power cut: nothing says the model did it), and a machine without a boot id count against
nothing.

Health windows run on serving time, never the wall clock: what each run served, added up
(checkpointed while it runs and at a clean stop), so clock steps neither pass a window early
nor hold it open.

Every function here is pure: it takes the journal (an immutable value) and an event and returns
the next journal, and where something must happen, the action. The updater and the daemon do
the I/O (``agent.updates.lifecycle``), and ``to_dict``/``from_dict`` are the journal on disk.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from agent.updates.health import HealthPolicy, Verdict, judge
from protos.refusals import MAX_REFUSALS, covers

__all__ = [
    "FORMAT",
    "MAX_FLOOR_KEYIDS",
    "MAX_REFUSED",
    "Decision",
    "Entry",
    "Journal",
    "JournalError",
    "Offer",
    "Refusal",
    "Refused",
    "Rollback",
    "Run",
    "Window",
    "activated",
    "cleared",
    "decide",
    "floor_of",
    "from_dict",
    "judge_window",
    "loading",
    "passed",
    "recovered",
    "rolled_back",
    "served",
    "serving",
    "settled_floor",
    "started",
    "stopped",
    "to_dict",
    "trial_ended",
]

# 4 added the variant names to entries. From 4 on, an entry's unknown fields are ignored: a
# field added later with a default needs no new format (an agent downgraded across a format
# serves its models but refuses updates, see ``Journal.newer``).
FORMAT = 4
MAX_REFUSED = MAX_REFUSALS  # the oldest go first; the server's rollout state still knows them
MAX_FLOOR_KEYIDS = 32  # keys that vouched for one floor: a manifest carries at most 16 signatures


class JournalError(ValueError):
    """The journal on disk is not one this agent can read."""


@dataclass(frozen=True)
class Entry:
    """A verified release in the store: what serves (or served) for one model name."""

    version: str
    release_counter: int
    sha256: str
    filename: str
    fallback_filename: str = ""  # the CPU variant shipped with an Edge TPU model
    # After falling back from a damaged file: the artifact of the release the floor (the
    # release counter) belongs to, which may be installed again under that same release.
    floor_sha256: str = ""
    # The manifest's variant names ("edgetpu", "int8", ...) of the file and of its fallback: what
    # the inference API reports as serving. Empty in journals written before they were kept.
    variant: str = ""
    fallback_variant: str = ""
    # The keys that signed the manifests which set the release floor (``release_counter``):
    # release keys, or root keys for an explicit rollback. A floor that only keys revoked since
    # (a stolen release key) vouched for can be undone by a root-signed recovery. Empty when
    # unknown (journals of older agents; filled from the next verified envelope of the release).
    floor_keyids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Window:
    """A watched activation: the serving time its earlier runs added up, and the abnormal
    deaths of the agent attributed to it."""

    served_s: float = 0.0
    crashes: int = 0


@dataclass(frozen=True)
class Refusal:
    """A release this device will not install again."""

    model_name: str  # "" only for refusals migrated from format 2, which did not record it
    sha256: str

    def matches(self, name: str, sha256: str) -> bool:
        return self.sha256 == sha256 and self.model_name in ("", name)


@dataclass(frozen=True)
class Run:
    """The latest run of the agent, as far as it got.

    ``loading`` is the (model, sha256, version) being loaded or smoke-tested, ``serving``
    the watched or on-trial models that were serving; a run that ends without ``clean`` in the same
    ``boot`` died abnormally."""

    boot: str = ""
    clean: bool = True
    loading: tuple[str, str, str] | None = None
    serving: tuple[str, ...] = ()


@dataclass(frozen=True)
class Journal:
    """Everything the device must remember about its models across kills and reboots.

    ``trials``: per model, the release being tried and how often the agent died while
    loading it. ``newer``: the format this journal was written in by a newer agent (0 when it
    is ours): its models are served, nothing is written.
    """

    models: Mapping[str, Entry] = field(default_factory=dict)
    previous: Mapping[str, Entry] = field(default_factory=dict)
    health: Mapping[str, Window] = field(default_factory=dict)
    refused: tuple[Refusal, ...] = ()
    trials: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    run: Run = field(default_factory=Run)
    newer: int = 0

    def is_refused(self, name: str, sha256: str) -> bool:
        return any(r.matches(name, sha256) for r in self.refused)


@dataclass(frozen=True)
class Rollback:
    """Roll ``model_name`` back to its last-known-good, refusing the current release."""

    model_name: str
    reason: str


@dataclass(frozen=True)
class Refused:
    """A release on trial killed the agent too often while loading: it is refused (report)."""

    model_name: str
    version: str
    reason: str


class Decision(enum.Enum):
    """What to do with a release the server asks for."""

    REFUSE = "refuse"  # rolled back (or crashed the agent) here: skip it quietly
    CURRENT = "current"  # it is what is active: make sure its files are there and it serves
    INSTALL = "install"  # try it


@dataclass(frozen=True)
class Offer:
    model_name: str
    version: str
    sha256: str


# events ------------------------------------------------------------------------------------


def started(
    journal: Journal, *, boot: str, policy: HealthPolicy
) -> tuple[Journal, list[Rollback | Refused]]:
    """A new run of the agent begins in ``boot``: attribute how the last run ended, and roll
    back (or refuse, on trial) the releases that have become crash loops (before anything is
    loaded)."""
    last = journal.run
    health = dict(journal.health)
    trials = dict(journal.trials)
    refused = journal.refused
    rollbacks: list[Rollback | Refused] = []
    if not last.clean and last.boot and last.boot == boot:
        # A death during a load is the load's: a model that merely served meanwhile is not
        # blamed. Without a load under way, every watched release that served is a suspect.
        suspects = set() if last.loading is not None else set(last.serving)
        if last.loading is not None:
            name, sha, version = last.loading
            active = journal.models.get(name)
            if active is not None and active.sha256 == sha:
                suspects.add(name)  # an active release loading at start
            else:  # a new release on trial: it never served, it is not rolled back but refused
                tried, crashes = trials.get(name, (sha, 0))
                crashes = crashes + 1 if tried == sha else 1
                if crashes >= policy.max_starts:
                    trials.pop(name, None)
                    refused = _refuse(refused, name, sha)
                    rollbacks.append(
                        Refused(
                            name,
                            version,
                            f"the agent died {crashes} times while loading or smoke-testing it",
                        )
                    )
                else:
                    trials[name] = (sha, crashes)
        for name in sorted(suspects):
            window = health.get(name)
            if window is None:
                continue
            window = replace(window, crashes=window.crashes + 1)
            health[name] = window
            if window.crashes >= policy.max_starts:
                rollbacks.append(
                    Rollback(
                        name,
                        f"crash loop: the agent died {window.crashes} times while "
                        "this release was loading or serving in its health window",
                    )
                )
    run = Run(boot=boot, clean=False)
    return replace(journal, health=health, trials=trials, refused=refused, run=run), rollbacks


def loading(journal: Journal, name: str, sha256: str, version: str) -> Journal:
    """``name``'s release ``sha256`` is about to be loaded (and smoke-tested)."""
    return replace(journal, run=replace(journal.run, loading=(name, sha256, version)))


def serving(journal: Journal, name: str) -> Journal:
    """``name`` serves: its load is over."""
    run = journal.run
    names = run.serving if name in run.serving else (*run.serving, name)
    return replace(journal, run=replace(run, loading=None, serving=names))


def trial_ended(journal: Journal, name: str) -> Journal:
    """A trial ended without the agent dying (refused, failed or postponed): the loading
    marker goes; a release that failed cleanly is not a crash."""
    run = journal.run
    if run.loading is None or run.loading[0] != name:
        return journal
    return replace(journal, run=replace(run, loading=None))


def stopped(journal: Journal) -> Journal:
    """The agent stops through its own code: nothing of this run is a crash."""
    return replace(journal, run=Run(boot=journal.run.boot, clean=True))


def decide(journal: Journal, offer: Offer) -> Decision:
    """What to do with a release the server asks for."""
    if journal.is_refused(offer.model_name, offer.sha256):
        return Decision.REFUSE
    active = journal.models.get(offer.model_name)
    if active is not None and active.sha256 == offer.sha256 and active.version == offer.version:
        return Decision.CURRENT
    return Decision.INSTALL


def activated(journal: Journal, name: str, entry: Entry) -> Journal:
    """``entry`` passed its smoke test and is active: the old active entry becomes the
    last-known-good, and a health window opens when there is one to return to.

    The same bytes re-released under a new version change nothing but the entry: a window
    open on them stays open. A release replacing one still in its window leaves the trusted
    last-known-good in place: an unproven release never becomes one.
    """
    models = {**journal.models, name: entry}
    previous = dict(journal.previous)
    health = dict(journal.health)
    old = journal.models.get(name)
    if old is not None and old.sha256 != entry.sha256:
        if name not in journal.health or name not in previous:
            previous[name] = old
        health[name] = Window()
    trials = {k: v for k, v in journal.trials.items() if k != name}
    journal = replace(journal, models=models, previous=previous, health=health, trials=trials)
    return serving(journal, name)


def served(journal: Journal, name: str, served_s: float) -> Journal:
    """Checkpoint the serving time of ``name``'s open window (a total, not an increment)."""
    window = journal.health.get(name)
    if window is None or served_s <= window.served_s:
        return journal
    return replace(journal, health={**journal.health, name: replace(window, served_s=served_s)})


def judge_window(
    journal: Journal,
    name: str,
    policy: HealthPolicy,
    *,
    served_s: float,
    requests: int,
    errors: int,
    p50_ms: float,
    baseline_p50_ms: float,
) -> Verdict:
    """The verdict on ``name``'s open window (``pass`` when it has none)."""
    window = journal.health.get(name)
    if window is None:
        return Verdict("pass")
    return judge(  # crash loops are judged at start (``started``), before anything loads
        policy,
        elapsed_s=served_s,
        starts=0,
        requests=requests,
        errors=errors,
        p50_ms=p50_ms,
        baseline_p50_ms=baseline_p50_ms,
    )


def passed(journal: Journal, name: str) -> Journal:
    """``name``'s release passed its health window: it is trusted."""
    if name not in journal.health:
        return journal
    return replace(journal, health={k: v for k, v in journal.health.items() if k != name})


def rolled_back(
    journal: Journal, name: str, *, refuse: bool = True
) -> tuple[Journal, Entry | None]:
    """The last-known-good of ``name`` is active again; with ``refuse`` the release it
    replaces is not installed again until an operator clears its refusal (without: the release
    is fine, its file on this disk was not). Returns the restored entry, None when there is
    none (the release stays active)."""
    bad = journal.models.get(name)
    good = journal.previous.get(name)
    previous = {k: v for k, v in journal.previous.items() if k != name}
    health = {k: v for k, v in journal.health.items() if k != name}
    refused = journal.refused
    if bad is not None and refuse:
        refused = _refuse(refused, name, bad.sha256)
    models = dict(journal.models)
    if good is not None:
        if bad is not None:
            # The anti-rollback floor stays at the highest release seen: going back must not
            # let a replayed release between the two in. The floor's release stays the one
            # rolled back from, which may come back: downloaded again after a damaged file,
            # or once an operator clears its refusal.
            floor = ""
            if bad.release_counter >= good.release_counter:
                floor = bad.floor_sha256 or bad.sha256
            counter, keyids = _higher_floor(
                (good.release_counter, good.floor_keyids), (bad.release_counter, bad.floor_keyids)
            )
            good = replace(good, floor_sha256=floor, release_counter=counter, floor_keyids=keyids)
        models[name] = good
    journal = replace(journal, models=models, previous=previous, health=health, refused=refused)
    return journal, good


def settled_floor(
    journal: Journal, name: str, release_counter: int, keyids: tuple[str, ...] = ()
) -> Journal:
    """The active release of ``name`` is what the server wants, in a manifest ``keyids``
    signed: raise its release floor to ``release_counter`` (when higher) and let the floor
    belong to this release alone. A manifest of the floor's own counter adds its signers to the
    floor's (a journal of an older agent learns them)."""
    entry = journal.models.get(name)
    if entry is None:
        return journal
    counter, floor_keyids = _higher_floor(
        (entry.release_counter, entry.floor_keyids), (release_counter, keyids)
    )
    entry = replace(entry, release_counter=counter, floor_sha256="", floor_keyids=floor_keyids)
    return replace(journal, models={**journal.models, name: entry})


def floor_of(
    active: Entry | None, release_counter: int, keyids: tuple[str, ...], *, recovery: bool = False
) -> tuple[int, tuple[str, ...]]:
    """The release floor, and the keys that set it, once a manifest of ``release_counter``
    (for an explicit rollback: the higher of its counter and ``rollback_from``) signed by
    ``keyids`` replaces ``active``. The floor never goes down, but for a ``recovery``: the
    root keys undo a floor that only revoked keys set (``agent.updates.verify``)."""
    if active is None or recovery:
        return release_counter, _bounded(keyids)
    return _higher_floor((active.release_counter, active.floor_keyids), (release_counter, keyids))


def recovered(journal: Journal, name: str, entry: Entry) -> Journal:
    """A root-signed recovery made ``entry`` active below a floor only revoked keys had set:
    the release it replaces came from a stolen key, so it is no last-known-good (nothing to
    roll back to, no health window), and the floor is ``entry``'s."""
    models = {**journal.models, name: entry}
    previous = {k: v for k, v in journal.previous.items() if k != name}
    health = {k: v for k, v in journal.health.items() if k != name}
    trials = {k: v for k, v in journal.trials.items() if k != name}
    journal = replace(journal, models=models, previous=previous, health=health, trials=trials)
    return serving(journal, name)


def _higher_floor(
    current: tuple[int, tuple[str, ...]], offered: tuple[int, tuple[str, ...]]
) -> tuple[int, tuple[str, ...]]:
    """The higher of two floors with the keys that set it; both sets for an equal counter
    (every key that vouched for a floor must be revoked before a recovery may undo it)."""
    (counter, keyids), (other, other_keyids) = current, offered
    if other > counter:
        return other, _bounded(other_keyids)
    if other == counter:
        return counter, _bounded((*keyids, *other_keyids))
    return counter, keyids


def _bounded(keyids: tuple[str, ...]) -> tuple[str, ...]:
    """The keys, sorted; more than the journal keeps end in ``"more"``, which no key list can
    revoke (not a key id): a floor that many keys vouched for is never undone by a recovery."""
    unique = sorted(set(keyids))
    if len(unique) <= MAX_FLOOR_KEYIDS:
        return tuple(unique)
    return (*unique[: MAX_FLOOR_KEYIDS - 1], "more")


def cleared(journal: Journal, name: str, sha256: str = "") -> Journal:
    """An operator cleared the refusal of ``name``'s release ``sha256`` (every refusal of
    ``name`` without one, and refusals migrated without a model name)."""

    def kept(r: Refusal) -> bool:
        return not covers(name, sha256, r.model_name, r.sha256)

    trials = {k: v for k, v in journal.trials.items() if k != name}
    return replace(journal, refused=tuple(filter(kept, journal.refused)), trials=trials)


def _refuse(refused: tuple[Refusal, ...], name: str, sha256: str) -> tuple[Refusal, ...]:
    kept = tuple(r for r in refused if r != Refusal(name, sha256))
    return (*kept, Refusal(name, sha256))[-MAX_REFUSED:]


# the journal on disk -----------------------------------------------------------------------


def to_dict(journal: Journal) -> dict[str, Any]:
    """The journal as JSON-ready data (format ``FORMAT``)."""
    run = journal.run
    return {
        "format": FORMAT,
        "models": {n: asdict(e) for n, e in journal.models.items()},
        "previous": {n: asdict(e) for n, e in journal.previous.items()},
        "health": {n: asdict(w) for n, w in journal.health.items()},
        "refused": [[r.model_name, r.sha256] for r in journal.refused],
        "trials": {n: [sha, crashes] for n, (sha, crashes) in journal.trials.items()},
        "run": {
            "boot": run.boot,
            "clean": run.clean,
            "loading": list(run.loading) if run.loading else None,
            "serving": list(run.serving),
        },
    }


def from_dict(raw: Any, *, model_of: Mapping[str, str] | None = None) -> Journal:
    """Read a journal of any format this agent knows (1 to 4), or the models of a newer
    one (``Journal.newer`` set: serve them, write nothing).

    ``model_of`` maps an artifact sha256 to the model it is stored under: format 2 refused
    bare hashes, and a hash found under one model becomes that model's refusal.

    Raises:
        JournalError: not a journal, or a damaged one.
    """
    if not isinstance(raw, dict):
        raise JournalError("the journal is not a JSON object")
    version = raw.get("format")
    try:
        if version == 1:  # the foundation's pointer file: no history yet
            return Journal(models=_entries(raw["models"]))
        if version == 2:
            owners = model_of or {}
            return Journal(
                models=_entries(raw["models"]),
                previous=_entries(raw["previous"]),
                # Format 2 counted every start (clean ones too) by the wall clock: each open
                # window starts again, with no crash counted.
                health={name: Window() for name in raw["health"]},
                refused=tuple(Refusal(owners.get(sha, ""), str(sha)) for sha in raw["refused"]),
            )
        if version in (3, FORMAT):
            run, lenient = raw["run"], version >= 4
            return Journal(
                models=_entries(raw["models"], lenient=lenient),
                previous=_entries(raw["previous"], lenient=lenient),
                health={
                    str(n): Window(float(w["served_s"]), int(w["crashes"]))
                    for n, w in raw["health"].items()
                },
                refused=tuple(Refusal(str(n), str(s)) for n, s in raw["refused"]),
                trials={str(n): (str(s), int(c)) for n, (s, c) in raw["trials"].items()},
                run=Run(
                    boot=str(run["boot"]),
                    clean=bool(run["clean"]),
                    loading=_loading(run["loading"]),
                    serving=tuple(str(n) for n in run["serving"]),
                ),
            )
        if isinstance(version, int) and version > FORMAT:
            # A newer agent wrote it (and was then downgraded): its active models still serve.
            return Journal(models=_entries(raw.get("models", {}), lenient=True), newer=version)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JournalError(f"a damaged format {version} journal: {exc!r}") from exc
    raise JournalError(f"unknown journal format {version!r}")


def _loading(raw: Any) -> tuple[str, str, str] | None:
    if not raw:
        return None
    name, sha, version = raw
    return str(name), str(sha), str(version)


_ENTRY_FIELDS = {f.name for f in fields(Entry)}


def _entries(table: Any, *, lenient: bool = False) -> dict[str, Entry]:
    entries = {}
    for name, data in table.items():
        known = {k: v for k, v in data.items() if k in _ENTRY_FIELDS} if lenient else data
        entry = Entry(**known)
        if not isinstance(entry.sha256, str) or not isinstance(entry.release_counter, int):
            raise TypeError(f"bad entry for {name!r}")
        keyids = entry.floor_keyids
        if not isinstance(keyids, (list, tuple)) or len(keyids) > MAX_FLOOR_KEYIDS:
            raise TypeError(f"bad floor keys for {name!r}")
        if not all(isinstance(k, str) for k in keyids):
            raise TypeError(f"bad floor keys for {name!r}")
        entry = replace(entry, floor_keyids=tuple(keyids))
        entries[str(name)] = entry
    return entries
