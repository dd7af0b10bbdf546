"""The device's update lifecycle (agent/updates/plan.py), driven as a state machine.

Hypothesis interleaves pushes, check-ins (installs that succeed, are postponed by a full disk
or an unreachable server, fail on a damaged file, or kill the agent while loading), deaths of
the agent while models serve, deaths before anything loaded, power cuts, clean restarts,
serving time and health verdicts, and operators clearing refusals. Clock steps need no rule:
nothing in the plan takes the wall clock (its serving time comes from the monotonic clock, see
tests/test_agent_resilience.py for a step under a running agent). After every step:
a verified model stays active, nothing is rolled back without a death attributable to the
release (or a bad health verdict), a refusal names one (model, sha256), and the journal
survives its trip through JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.updates import plan
from agent.updates.health import HealthPolicy

POLICY = HealthPolicy(window_s=60.0, max_starts=3)
MODELS = ("digits", "faces")
BYTES = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)  # shared across models on purpose


@dataclass(frozen=True)
class Release:
    version: str
    counter: int
    sha256: str

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
        self.start()
        for name in MODELS:  # a first release of each, trusted at once: windows come sooner
            self.push(name, BYTES[0])
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

    @rule(name=st.sampled_from(MODELS), sha=st.sampled_from(BYTES))
    def push(self, name: str, sha: str) -> None:
        self.counter += 1
        self.desired[name] = Release(f"{self.counter}.0.0", self.counter, sha)

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
        if decision is not plan.Decision.INSTALL:
            return
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
        active = self.journal.models.get(name)
        if active is None or active.sha256 != release.sha256:  # same bytes: the window goes on
            self.blamed.pop((name, release.sha256), None)  # its trial is over; a window opens
        self.journal = plan.activated(self.journal, name, release.entry())
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

    # what must always hold ----------------------------------------------------------------

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
