"""The tiers cannot drift: a test that starts a process and is not marked slow fails.

Each test runs a small pytest session (in this process) with the guard of tests/conftest.py.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.conftest import pytest_configure, pytest_unconfigure
"""
INI = """
[pytest]
addopts = --strict-markers
markers = slow: starts processes
"""


def test_an_unmarked_test_that_starts_a_process_fails_however_it_starts_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import multiprocessing
        import os
        import subprocess
        import threading

        import pytest

        @pytest.fixture(scope="session")
        def broker():
            subprocess.Popen(["true"]).wait()

        def test_run():
            subprocess.run(["true"], check=False)

        def test_fork_swallowed():
            try:
                os.fork()
            except BaseException:
                pass

        def test_thread():
            thread = threading.Thread(target=os.system, args=("true",))
            thread.start()
            thread.join()

        def test_multiprocessing():
            ctx = multiprocessing.get_context("spawn")
            ctx.Process(target=print).start()

        def test_fixture(broker):
            pass

        def test_pure():
            assert sum(range(4)) == 6
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_fixture*",
            "this test starts a process (true, in fixture broker); mark it slow*",
            "*_ test_run _*",
            "this test starts a process (true); mark it slow*",
            "*_ test_fork_swallowed _*",
            "this test starts a process (fork); mark it slow*",
            "*_ test_thread _*",
            "this test starts a process (sh -c 'true'); mark it slow*",
            "*_ test_multiprocessing _*",
            "this test starts a process (python* -c); mark it slow*",
        ]
    )


@pytest.mark.slow
def test_a_slow_test_may_start_processes_and_a_fixture_it_started_marks_its_users(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import subprocess

        import pytest

        @pytest.fixture(scope="session")
        def broker():
            subprocess.run(["true"], check=True)

        @pytest.mark.slow
        def test_slow_first(broker):
            subprocess.run(["true"], check=True)

        def test_fast_later(broker):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_fast_later*",
            "this test starts a process (broker starts true); mark it slow*",
        ]
    )
