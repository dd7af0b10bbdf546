"""Shared fixtures: a private MQTT broker, test models, server and agent factories.

Two tiers: a test that starts a process (a server, an agent, mosquitto, gcc, a script,
Chromium ...), itself or through a fixture, is marked ``slow``; the rest run in
``make test-fast``. The process guard below fails an unmarked test that starts one, so the
tiers cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests import harness
from tests.harness import REPO, Agent, Server, make_agent, start_mosquitto, start_server

# No property test may depend on an idle machine: Hypothesis' per-example deadline (200 ms by
# default) fails a test whose example ran slowly because the 2 cores were busy elsewhere.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")

SLOW_HINT = "mark it slow (pytestmark = pytest.mark.slow, or @pytest.mark.slow on the test)"


def _command(args: Any) -> str:
    """The start of a command line, for messages: ``python -m fleet_server.cli``."""
    parts = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    words = [os.fsdecode(p) for p in parts[:3]]
    if words:
        words[0] = Path(words[0]).name
    return " ".join(words)


class ProcessGuard:
    """Fails a test not marked slow that starts a process, itself or through a fixture.

    Every way this interpreter starts a process passes one of the wrapped functions:
    ``Popen._execute_child`` (subprocess.run, check_output, asyncio), ``_posixsubprocess``
    (multiprocessing's spawn), ``os.fork`` (multiprocessing's fork, os.spawn*),
    ``os.posix_spawn`` and ``os.system``. A fixture seen starting one (a session-scoped broker,
    say) is remembered, so a later test that uses it is failed too although the fixture is
    already set up by then.
    """

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.fixtures: list[str] = []  # the fixtures being set up now, innermost last
        self.starters: dict[str, str] = {}  # fixture name -> the first process it started
        self.violations: dict[str, str] = {}  # test id -> why it must be marked slow
        self._patches = pytest.MonkeyPatch()

    def install(self) -> None:
        import _posixsubprocess

        def wrap(owner: object, name: str, describe: Callable[[tuple[Any, ...]], str]) -> None:
            original = getattr(owner, name)

            def guarded(*args: Any, **kwargs: Any) -> Any:
                self.starting(describe(args))
                return original(*args, **kwargs)

            self._patches.setattr(owner, name, guarded)

        wrap(subprocess.Popen, "_execute_child", lambda a: _command(a[1]))
        wrap(_posixsubprocess, "fork_exec", lambda a: _command(a[0]))
        wrap(os, "fork", lambda _a: "fork")
        wrap(os, "forkpty", lambda _a: "forkpty")
        wrap(os, "posix_spawn", lambda a: _command(a[1]))
        wrap(os, "posix_spawnp", lambda a: _command(a[1]))
        wrap(os, "system", lambda a: f"sh -c {a[0]!r}"[:60])

    def uninstall(self) -> None:
        self._patches.undo()

    def starting(self, what: str) -> None:
        """Before a process starts: remember the fixtures that start it, and fail the running
        test unless it is marked slow."""
        for name in self.fixtures:
            self.starters.setdefault(name, what)
        item = self.item
        if item is None or item.get_closest_marker("slow") is not None:
            return
        via = f", in fixture {self.fixtures[-1]}" if self.fixtures else ""
        message = f"this test starts a process ({what}{via}); {SLOW_HINT}"
        self.violations.setdefault(item.nodeid, message)
        pytest.fail(message, pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.item = item
        try:
            return (yield)
        finally:
            self.item = None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any]
    ) -> Generator[None, object, object]:
        self.fixtures.append(fixturedef.argname)
        try:
            return (yield)
        finally:
            self.fixtures.pop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker("slow") is not None:
            return
        used = sorted(set(getattr(item, "fixturenames", ())) & self.starters.keys())
        if used:
            started = ", ".join(f"{name} starts {self.starters[name]}" for name in used)
            pytest.fail(f"this test starts a process ({started}); {SLOW_HINT}", pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        # A process started from another thread, or an error the code under test swallowed,
        # still fails the test.
        report = yield
        message = self.violations.pop(item.nodeid, None)
        if message is not None and report.passed:
            report.outcome = "failed"
            report.longrepr = message
        return report


_FIRST_STARTED = pytest.StashKey[int]()
_LOG_TAIL = 4000  # characters of each process's log shown under a failed test


@pytest.fixture(autouse=True)
def _stop_what_the_test_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kill every process the test started (``harness.start``) and left running: a test that
    fails halfway must not leave brokers and agents eating the CPU of the tests after it.
    Processes of module and session fixtures were started before this ran and are kept."""
    first = len(harness.STARTED)
    request.node.stash[_FIRST_STARTED] = first
    yield
    for proc in harness.STARTED[first:]:
        if proc.popen.poll() is None:
            proc.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
    del harness.STARTED[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under a test that failed, the end of the log of every process it started: a failure
    that happens once in CI (a loaded machine) can then be read, not guessed."""
    report = yield
    first = item.stash.get(_FIRST_STARTED, None)
    if call.when != "call" or not report.failed or first is None:
        return report
    for proc in harness.STARTED[first:]:
        with contextlib.suppress(OSError):
            tail = proc.output()[-_LOG_TAIL:]
            report.sections.append((f"log of {proc.log.name} ({proc.log.parent.name})", tail))
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--arm64",
        action="store_true",
        help="also run the tests marked arm64 (an emulated arm64 root: make test-arm64)",
    )
    parser.addoption(
        "--objstore",
        action="store_true",
        help="also run the tests marked objstore (Ceph's radosgw, network namespaces: make "
        "test-objstore)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the arm64 and objstore tests unless --arm64 / --objstore ask for them: they
    need root, qemu and a cached Debian root, or Ceph's packages and network namespaces, and
    `make test-arm64` and `make test-objstore` run them on their own (CI calls all three)."""
    skipped = {marker for marker in ("arm64", "objstore") if not config.getoption(f"--{marker}")}
    kept = [item for item in items if not any(item.get_closest_marker(m) for m in skipped)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    guard = ProcessGuard()
    guard.install()
    config.pluginmanager.register(guard, "edgefleet-process-guard")


def pytest_unconfigure(config: pytest.Config) -> None:
    guard = config.pluginmanager.get_plugin("edgefleet-process-guard")
    if isinstance(guard, ProcessGuard):
        guard.uninstall()


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT v5 broker (mosquitto, anonymous: the tests' own) for this test session.
    The shipped, closed configurations are tested in test_mqtt_acl and test_mqtt_attacks."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is not installed; .ci/run installs it from Debian's packages")
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker.url
    broker.proc.stop()


@pytest.fixture(scope="session")
def color_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float and int8-input colour classifiers, built by scripts/make_test_models.py.

    Built in this process (the script's ``main``), not by running it: a fixture that starts a
    process would make every engine test that reads these models a slow one.
    """
    out = tmp_path_factory.mktemp("color-models")
    script = runpy.run_path(str(REPO / "scripts" / "make_test_models.py"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert script["main"]([str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def float_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real float image classifier without a signature: the Coral MobileNet in tests/data
    dequantized by scripts/make_float_classifier.py (in this process, like color_models)."""
    script = runpy.run_path(str(REPO / "scripts" / "make_float_classifier.py"))
    path = tmp_path_factory.mktemp("float-classifier") / "mobilenet_float.tflite"
    quantized = (REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    path.write_bytes(script["dequantize"](quantized))
    return path


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start fleet servers (stopped at the end of the test)."""
    started: list[Server] = []

    def factory(
        mqtt_url: str | None,
        folder: Path | None = None,
        db_url: str | None = None,
        extra: Sequence[str] = (),
        data_dir: Path | None = None,
    ) -> Server:
        server = start_server(folder or tmp_path, mqtt_url, db_url, extra, data_dir)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.proc.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Configure and start agents (stopped at the end of the test)."""
    started: list[Agent] = []

    def factory(name: str, server: Server, **kwargs: Any) -> Agent:
        agent = make_agent(tmp_path, name, server, **kwargs).start()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        if agent.proc is not None:
            agent.proc.stop()


@dataclass(frozen=True)
class FakeEdgeTpu:
    """The fake libedgetpu built from tests/fakes (see the C file: it runs nothing)."""

    library: Path
    not_a_delegate: Path


@pytest.fixture(scope="session")
def fake_edgetpu(tmp_path_factory: pytest.TempPathFactory) -> FakeEdgeTpu:
    """Compile the fake Edge TPU delegate and a non-delegate library with gcc."""
    out = tmp_path_factory.mktemp("fake-edgetpu")
    fakes = REPO / "tests" / "fakes"
    built = {}
    for source, name in (
        ("fake_edgetpu.c", "libfake_edgetpu.so"),
        ("not_a_delegate.c", "libnot_a_delegate.so"),
    ):
        target = out / name
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
                str(target),
                str(fakes / source),
            ],
            check=True,
        )
        built[name] = target
    return FakeEdgeTpu(built["libfake_edgetpu.so"], built["libnot_a_delegate.so"])


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (127.0.0.1:5432, trust auth), dropped at
    the end of the session. .ci/run makes sure the server runs."""
    import secrets

    import sqlalchemy as sa

    name = f"edgefleet_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc.orig}); .ci/run starts it"
        )
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same storage tests on both backends: SQLite, and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    import sqlalchemy as sa

    base: str = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    schema = f"t_{tmp_path.name.lower().replace('-', '_')[:40]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    yield f"{base}?options=-csearch_path%3D{schema}"
