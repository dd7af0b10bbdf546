"""The device's update lifecycle (agent/updates/plan.py), driven as a state machine.

Hypothesis interleaves pushes, check-ins (installs that succeed, are postponed by a full disk
or an unreachable server, fail on a damaged file, or kill the agent while loading), deaths of
the agent while models serve, deaths before anything loaded, power cuts, clean restarts,
serving time and health verdicts, and operators clearing refusals. Clock steps need no rule:
nothing in the plan takes the wall clock (its serving time comes from the monotonic clock, see
tests/test_agent_resilience.py for a step under a running agent). Releases are signed by
release keys (one of them stolen and later revoked), re-signed, and undone by root-signed
recoveries; an older agent may rewrite the journal without the floors' keys. After every step:
a verified model stays active, nothing is rolled back without a death attributable to the
release (or a bad health verdict), a refusal names one (model, sha256), each floor is the
highest release the device verified (but after a recovery) and knows every key that vouched
for it, a recovery happens only when all of them are revoked, and the journal survives its
trip through JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.updates import plan
from agent.updates.health import HealthPolicy

POLICY = HealthPolicy(window_s=60.0, max_starts=3)
MODELS = ("digits", "faces")
BYTES = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)  # shared across models on purpose
KEYS = ("stolen", "k2", "k3")  # release keys
ROOT = ("root1", "root2")  # the root keys that sign explicit rollbacks and recoveries


@dataclass(frozen=True)
class Release:
    version: str
    counter: int
    sha256: str
    keyids: tuple[str, ...] = ("k2",)
    rollback_from: int = 0  # a recovery's

    @property
    def floor(self) -> int:
        return max(self.counter, self.rollback_from)

    def entry(self) -> plan.Entry:
        return plan.Entry(self.version, self.counter, self.sha256, f"{self.sha256}.tflite")


def roundtrip(journal: plan.Journal) -> plan.Journal:
    return plan.from_dict(json.loads(json.dumps(plan.to_dict(journal))))


class Device(RuleBasedStateMachine):
    """One device's journal, and what the test knows happened to it."""

    @initialize()
    def boot(self) -> None:
        self.journal = plan.Journal()
        self.boot_no = 0
        self.alive = False
        self.desired: dict[str, Release] = {}
        self.counter = 0
        self.verified: set[tuple[str, str]] = set()  # releases that passed their smoke test
        self.installed: set[str] = set()  # models that ever had an active release
        self.loaded: set[str] = set()  # models the running agent serves
        # Deaths of the agent while a watched (or on-trial) release loaded or served, counted
        # by the test itself, per (model, sha256); cleared when a window closes.
        self.blamed: dict[tuple[str, str], int] = {}
        self.bad_verdicts: set[tuple[str, str]] = set()
        self.served: dict[str, float] = {}  # serving time of this run, per watched model
        # Per model: the floor the test expects (the highest release verified, or a
        # recovery's), and every key that vouched for it (None: unknown to the journal).
        self.floor: dict[str, tuple[int, set[str] | None]] = {}
        self.revoked: set[str] = set()
        self.start()
        for name in MODELS:  # a first release of each, trusted at once: windows come sooner
            self._push(name, BYTES[0], {"k2"})
            self.check_in(name, "ok")

    # the agent's runs ----------------------------------------------------------------------

    def start(self, *, new_boot: bool = False) -> None:
        if new_boot:
            self.boot_no += 1
        journal, actions = plan.started(self.journal, boot=f"boot-{self.boot_no}", policy=POLICY)
        for action in actions:
            if isinstance(action, plan.Refused):
                sha = self.journal.run.loading[1] if self.journal.run.loading else ""
                assert self.blamed.get((action.model_name, sha), 0) >= POLICY.max_starts
                continue
            bad = journal.models[action.model_name]
            key = (action.model_name, bad.sha256)
            assert self.blamed.get(key, 0) >= POLICY.max_starts, f"rollback without cause {key}"
            journal, _ = plan.rolled_back(journal, action.model_name)
        self.journal = journal
        self.alive = True
        self.loaded = set()
        self.served = {}
        for name in sorted(self.journal.models):
            if name in self.journal.health:
                self.journal = plan.loading(
                    self.journal, name, self.journal.models[name].sha256, "v"
                )
            self.journal = plan.serving(self.journal, name)
            self.loaded.add(name)
            self.served[name] = (
                self.journal.health[name].served_s if (name in self.journal.health) else 0.0
            )

    def die(self) -> None:
        """An abnormal death now: blamed on the release loading, if one was, or else on every
        watched release that served."""
        run = self.journal.run
        if run.loading is not None:
            name, sha, _ = run.loading
            self.blamed[(name, sha)] = self.blamed.get((name, sha), 0) + 1
        else:
            for name in self.loaded:
                active = self.journal.models.get(name)
                if active is not None and name in self.journal.health:
                    key = (name, active.sha256)
                    self.blamed[key] = self.blamed.get(key, 0) + 1
        self.alive = False

    @precondition(lambda self: not self.alive)
    @rule(power_cut=st.booleans())
    def restart(self, power_cut: bool) -> None:
        self.start(new_boot=power_cut)

    @precondition(lambda self: self.alive)
    @rule()
    def killed_while_serving(self) -> None:
        self.die()

    @precondition(lambda self: self.alive)
    @rule()
    def power_cut(self) -> None:
        # The machine goes down with the agent: nothing says the model did it.
        self.alive = False
        self.start(new_boot=True)

    @precondition(lambda self: self.alive)
    @rule()
    def restarted_and_killed_before_anything_loaded(self) -> None:
        self.clean_stop()
        journal, actions = plan.started(self.journal, boot=f"boot-{self.boot_no}", policy=POLICY)
        assert actions == []  # a clean stop is nobody's fault
        self.journal = journal  # then it dies (a port taken, a bad config) before loading
        self.loaded = set()
        self.alive = False

    @precondition(lambda self: self.alive)
    @rule()
    def clean_stop(self) -> None:
        for name, total in self.served.items():
            self.journal = plan.served(self.journal, name, total)
        self.journal = plan.stopped(self.journal)
        self.alive = False

    # the server ----------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(MODELS),
        sha=st.sampled_from(BYTES),
        keys=st.sets(st.sampled_from(KEYS), min_size=1, max_size=2),
    )
    def push(self, name: str, sha: str, keys: set[str]) -> None:
        self._push(name, sha, keys)

    def _push(self, name: str, sha: str, keys: set[str]) -> None:
        signers = tuple(sorted(set(keys) - self.revoked))
        if not signers:
            return  # the device would refuse it: not a release
        self.counter += 1
        self.desired[name] = Release(f"{self.counter}.0.0", self.counter, sha, signers)

    @rule(name=st.sampled_from(MODELS), keys=st.sets(st.sampled_from(KEYS), min_size=1))
    def resign(self, name: str, keys: set[str]) -> None:
        """The server signs the desired release again, with other keys (a rotation)."""
        release = self.desired.get(name)
        signers = tuple(sorted(keys - self.revoked))
        if release is not None and signers and not release.rollback_from:
            self.desired[name] = replace(release, keyids=signers)

    @rule(key=st.sampled_from(KEYS))
    def revoke(self, key: str) -> None:
        """A key list revoking ``key`` reaches the device: it signs nothing any more."""
        self.revoked.add(key)

    @rule()
    def an_older_agent_rewrites_the_journal(self) -> None:
        """Downgraded and upgraded again: the entries lost the floors' keys."""
        raw = plan.to_dict(self.journal)
        for table in (raw["models"], raw["previous"]):
            for entry in table.values():
                del entry["floor_keyids"]
        self.journal = plan.from_dict(raw)
        self.floor = {name: (counter, None) for name, (counter, _) in self.floor.items()}

    @precondition(lambda self: self.alive)
    @rule(
        name=st.sampled_from(MODELS),
        sha=st.sampled_from(BYTES),
        below=st.integers(min_value=1, max_value=5),
        counter_below=st.integers(min_value=0, max_value=3),
    )
    def recover(self, name: str, sha: str, below: int, counter_below: int) -> None:
        """The root keys sign a recovery made at ``below`` under the device's floor."""
        active = self.journal.models.get(name)
        if active is None or self.journal.is_refused(name, sha):
            return
        rollback_from = max(0, active.release_counter - below)
        release = Release(
            f"r{self.counter}.{below}", max(0, rollback_from - counter_below), sha, ROOT,
            rollback_from,
        )  # fmt: skip
        # The rule agent/updates/verify.py applies above rollback_from (its own hypothesis
        # test in tests/test_recovery.py): every key of the journal's floor revoked.
        keys = active.floor_keyids
        if not keys or not set(keys) <= self.revoked:
            return  # refused: a replayed rollback, or a floor a key still trusted vouched for
        known = self.floor[name][1]
        assert known is not None and known <= self.revoked, "recovered over a trusted floor"
        counter, floor_keys = plan.floor_of(active, release.floor, ROOT, recovery=True)
        entry = replace(release.entry(), release_counter=counter, floor_keyids=floor_keys)
        self.journal = plan.recovered(self.journal, name, entry)
        event("recovered")
        self.verified.add((name, sha))
        self.desired[name] = release
        self.floor[name] = (release.floor, set(ROOT))
        self.loaded.add(name)
        self.served.pop(name, None)

    @precondition(lambda self: self.alive and self.desired)
    @rule(
        name=st.sampled_from(MODELS),
        outcome=st.sampled_from(
            ["ok", "ok", "ok", "disk full", "unreachable", "damaged", "dies loading"]
        ),
    )
    def check_in(self, name: str, outcome: str) -> None:
        release = self.desired.get(name)
        if release is None:
            return
        offer = plan.Offer(name, release.version, release.sha256)
        decision = plan.decide(self.journal, offer)
        refusal = self.journal.is_refused(name, release.sha256)
        assert (decision is plan.Decision.REFUSE) == refusal
        active = self.journal.models.get(name)
        if decision is plan.Decision.CURRENT and active is not None:
            if release.floor >= active.release_counter:  # the updater's _keep_current
                self.journal = plan.settled_floor(self.journal, name, release.floor, release.keyids)
                self._vouched(name, release)
            return
        if decision is not plan.Decision.INSTALL:
            return
        replayed = active is not None and active.release_counter > release.rollback_from
        if release.rollback_from and replayed:
            return  # a replayed recovery (its keys are checked in ``recover``)
        if outcome in ("disk full", "unreachable"):
            return  # postponed before anything loads: nothing changes
        self.journal = plan.loading(self.journal, name, release.sha256, release.version)
        if outcome == "damaged":
            self.journal = plan.trial_ended(self.journal, name)
            return
        if outcome == "dies loading":
            self.die()
            return
        self.verified.add((name, release.sha256))
        if active is None or active.sha256 != release.sha256:  # same bytes: the window goes on
            self.blamed.pop((name, release.sha256), None)  # its trial is over; a window opens
        counter, keys = plan.floor_of(active, release.floor, release.keyids)
        entry = replace(release.entry(), release_counter=counter, floor_keyids=keys)
        self.journal = plan.activated(self.journal, name, entry)
        self._vouched(name, release)
        self.installed.add(name)
        self.loaded.add(name)
        self.served[name] = 0.0

    @precondition(lambda self: self.alive)
    @rule(seconds=st.floats(0, 40), healthy=st.booleans(), name=st.sampled_from(MODELS))
    def serve(self, seconds: float, healthy: bool, name: str) -> None:
        if name not in self.journal.health or name not in self.loaded:
            return
        self.served[name] += seconds
        verdict = plan.judge_window(
            self.journal,
            name,
            POLICY,
            served_s=self.served[name],
            requests=100,
            errors=0 if healthy else 90,
            p50_ms=1.0,
            baseline_p50_ms=1.0,
        )
        if verdict.action == "pass":
            self.journal = plan.passed(self.journal, name)
        elif verdict.action == "rollback":
            self.bad_verdicts.add((name, self.journal.models[name].sha256))
            self.journal, _ = plan.rolled_back(self.journal, name)
        elif self.served[name] - self.journal.health[name].served_s > 10:
            self.journal = plan.served(self.journal, name, self.served[name])  # checkpoint

    @precondition(lambda self: self.alive)  # a clear arrives with a check-in
    @rule(name=st.sampled_from(MODELS))
    def operator_clears(self, name: str) -> None:
        others = [r for r in self.journal.refused if r.model_name != name]
        self.journal = plan.cleared(self.journal, name)
        assert list(self.journal.refused) == others  # only this model's refusals go

    def _vouched(self, name: str, release: Release) -> None:
        counter, keys = self.floor.get(name, (0, set()))
        if release.floor > counter:
            self.floor[name] = (release.floor, set(release.keyids))
        elif release.floor == counter:
            self.floor[name] = (counter, (keys or set()) | set(release.keyids))

    # what must always hold ----------------------------------------------------------------

    @invariant()
    def each_floor_knows_every_key_that_vouched_for_it(self) -> None:
        for name, (counter, keys) in self.floor.items():
            entry = self.journal.models[name]
            assert entry.release_counter == counter, f"{name}: floor {entry.release_counter}"
            if keys is not None:
                assert set(entry.floor_keyids) == keys, f"{name}: {entry.floor_keyids}"
            else:  # unknown since an older agent wrote it: only keys seen since
                assert set(entry.floor_keyids) <= set(KEYS) | set(ROOT)

    @invariant()
    def a_verified_model_stays_active(self) -> None:
        for name in self.installed:
            entry = self.journal.models.get(name)
            assert entry is not None, f"{name} was left without a model"
            assert (name, entry.sha256) in self.verified

    @invariant()
    def only_deaths_the_release_is_blamed_for_are_counted(self) -> None:
        for name, window in self.journal.health.items():
            key = (name, self.journal.models[name].sha256)
            assert window.crashes <= self.blamed.get(key, 0), f"{key}: a death not its own"
        for name, (sha, crashes) in self.journal.trials.items():
            assert crashes <= self.blamed.get((name, sha), 0)

    @invariant()
    def refusals_name_one_release_of_one_model(self) -> None:
        for refusal in self.journal.refused:
            assert refusal.model_name in MODELS and refusal.sha256 in BYTES
            key = (refusal.model_name, refusal.sha256)
            assert self.blamed.get(key, 0) >= POLICY.max_starts or key in self.bad_verdicts
        assert len(self.journal.refused) <= plan.MAX_REFUSED

    @invariant()
    def a_refusal_never_reaches_another_model(self) -> None:
        for refusal in self.journal.refused:
            for other in MODELS:
                if other != refusal.model_name and not any(
                    r.model_name == other and r.sha256 == refusal.sha256
                    for r in self.journal.refused
                ):
                    assert not self.journal.is_refused(other, refusal.sha256)

    @invariant()
    def the_journal_always_loads(self) -> None:
        assert roundtrip(self.journal) == self.journal


Device.TestCase.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)
test_the_lifecycle = Device.TestCase


def test_a_format_2_journal_migrates_with_its_refusals_named() -> None:
    raw = {
        "format": 2,
        "models": {
            "m": {
                "version": "2.0.0",
                "release_counter": 2,
                "sha256": "b" * 64,
                "filename": "b.tflite",
            }
        },
        "previous": {
            "m": {
                "version": "1.0.0",
                "release_counter": 1,
                "sha256": "a" * 64,
                "filename": "a.tflite",
            }
        },
        "health": {"m": {"since": 1.7e9, "starts": 2}},
        "refused": ["c" * 64, "e" * 64],
    }
    journal = plan.from_dict(raw, model_of={"c" * 64: "m"})
    assert journal.models["m"].version == "2.0.0" and journal.previous["m"].version == "1.0.0"
    # Format 2 counted clean starts too, by the wall clock: the window starts again.
    assert journal.health == {"m": plan.Window(0.0, 0)}
    assert journal.refused == (plan.Refusal("m", "c" * 64), plan.Refusal("", "e" * 64))
    assert journal.is_refused("m", "c" * 64) and not journal.is_refused("other", "c" * 64)
    assert journal.is_refused("other", "e" * 64)  # unknown owner: refused for every model
    assert not plan.cleared(journal, "other").is_refused("other", "e" * 64)


def test_a_newer_journal_is_served_and_never_written() -> None:
    raw = {
        "format": 9,
        "models": {
            "m": {
                "version": "1.0.0",
                "release_counter": 1,
                "sha256": "a" * 64,
                "filename": "a.tflite",
                "a_field_from_the_future": 1,
            }
        },
        "whatever": [],
    }
    journal = plan.from_dict(raw)
    assert journal.newer == 9 and journal.models["m"].version == "1.0.0"


def test_a_format_3_journal_reads_and_later_entry_fields_are_ignored() -> None:
    """Format 3 (before the variant names) reads as it was; a format 4 entry with a field a
    later agent added (and a default) reads without it, not as damage."""
    entry = {"version": "1.0.0", "release_counter": 1, "sha256": "a" * 64, "filename": "a.tflite"}
    run = {"boot": "b", "clean": True, "loading": None, "serving": ["m"]}
    rest = {"health": {}, "refused": [], "trials": {}, "run": run}
    old = plan.from_dict({"format": 3, "models": {"m": entry}, "previous": {}, **rest})
    assert old.models["m"].variant == "" and not old.newer
    later = dict(entry, variant="int8", a_later_field=[1])
    journal = plan.from_dict({"format": 4, "models": {"m": later}, "previous": {}, **rest})
    assert journal.models["m"].variant == "int8" and not journal.newer
    # What this agent writes reads back the same.
    assert plan.from_dict(plan.to_dict(journal)) == journal
    assert plan.to_dict(journal)["format"] == plan.FORMAT == 4


def test_damaged_journals_are_refused_with_a_reason() -> None:
    damaged: list[object] = [[], {"format": "x"}, {"format": 3, "models": {}}, {"format": 2}]
    for raw in damaged:
        try:
            plan.from_dict(raw)
        except plan.JournalError as exc:
            assert str(exc)
        else:
            raise AssertionError(f"{raw!r} was read")


def test_a_rollback_keeps_the_floor_and_the_keys_that_set_it() -> None:
    good = plan.Entry("1.0.0", 5, "a" * 64, "a.tflite", floor_keyids=("k2",))
    bad = plan.Entry("9.9.358", 458, "b" * 64, "b.tflite", floor_keyids=("stolen",))
    journal = plan.activated(plan.Journal(models={"m": good}), "m", bad)
    journal, restored = plan.rolled_back(journal, "m")
    assert restored is not None and restored.version == "1.0.0"
    assert (restored.release_counter, restored.floor_keyids) == (458, ("stolen",))


def test_a_recovery_leaves_no_last_known_good_and_no_window() -> None:
    good = plan.Entry("1.0.0", 5, "a" * 64, "a.tflite", floor_keyids=("k2",))
    bad = plan.Entry("9.9.358", 458, "b" * 64, "b.tflite", floor_keyids=("stolen",))
    journal = plan.activated(plan.Journal(models={"m": good}), "m", bad)
    assert journal.previous["m"] == good and "m" in journal.health
    counter, keys = plan.floor_of(journal.models["m"], 6, ("root1",), recovery=True)
    assert (counter, keys) == (6, ("root1",))  # the stolen key's 458 is gone
    back = replace(good, release_counter=counter, floor_keyids=keys)
    recovered = plan.recovered(journal, "m", back)
    assert recovered.models["m"] == back
    assert "m" not in recovered.previous and "m" not in recovered.health
    # Without the recovery the floor never goes down.
    assert plan.floor_of(journal.models["m"], 6, ("root1",)) == (458, ("stolen",))


def test_floor_keys_survive_the_journal_and_bad_ones_are_damage() -> None:
    entry = plan.Entry("1.0.0", 5, "a" * 64, "a.tflite", floor_keyids=("k2", "k3"))
    journal = plan.Journal(models={"m": entry})
    assert roundtrip(journal) == journal
    raw = json.loads(json.dumps(plan.to_dict(journal)))
    assert raw["models"]["m"]["floor_keyids"] == ["k2", "k3"]
    for bad in ("k2", [1], ["k"] * (plan.MAX_FLOOR_KEYIDS + 1)):
        raw["models"]["m"]["floor_keyids"] = bad
        try:
            plan.from_dict(raw)
        except plan.JournalError:
            continue
        raise AssertionError(f"floor keys {bad!r} were read")
    many = plan.floor_of(None, 5, tuple(f"{i:016x}" for i in range(40)))[1]
    assert len(many) == plan.MAX_FLOOR_KEYIDS and many[-1] == "more"  # never all revoked
