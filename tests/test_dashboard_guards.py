"""The dashboard's decisions without I/O (issue 22 item 7): where a login may send the browser
on, which query values pages take, which POSTs come from its own pages, how many wrong tokens
it takes and logs, and how many sessions it keeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.admins.roles import Role
from fleet_server.dashboard.guards import (
    MAX_OFFSET,
    PAGE_SIZES,
    BadInputError,
    local_target,
    query_choice,
    query_int,
    query_text,
    row_id,
    same_origin,
    selector,
)
from fleet_server.dashboard.limits import LoginLimiter
from fleet_server.dashboard.sessions import MAX_SESSIONS, SESSION_S, Person, Sessions


@pytest.mark.parametrize(
    "raw",
    [
        "//evil.example",
        "//evil.example/fleet",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/fleet\r\nSet-Cookie: x=1",
        "/fleet\nx",
        "/fleet\tx",
        "/fleet x",
        "/fl\u00e9et",
        "fleet",
        "",
        "/" + "a" * 3000,
    ],
)
def test_a_login_goes_on_only_to_a_local_path(raw: str) -> None:
    assert local_target(raw) == "/"


@pytest.mark.parametrize("raw", ["/", "/fleet", "/devices/cam-01?partial=1", "/fleet?q=a%20b"])
def test_local_paths_are_kept(raw: str) -> None:
    assert local_target(raw) == raw


@given(st.text(max_size=60))
def test_whatever_comes_in_the_target_is_a_path_of_this_host(raw: str) -> None:
    target = local_target(raw)
    assert target.startswith("/") and not target.startswith("//")
    assert "\\" not in target and all(0x21 <= ord(c) <= 0x7E for c in target)


def test_query_values_are_checked_with_a_message_that_says_what_is_taken() -> None:
    assert query_int({}, "offset", 0, 0, MAX_OFFSET) == 0
    assert query_int({"offset": "150"}, "offset", 0, 0, MAX_OFFSET) == 150
    for bad in ("-1", "abc", "1e3", "99999999999999999999", " 5", "\u0661\u0662"):
        with pytest.raises(BadInputError, match="offset must be a whole number from 0 to"):
            query_int({"offset": bad}, "offset", 0, 0, MAX_OFFSET)
    assert query_choice({"size": "100"}, "size", PAGE_SIZES, 50) == 100
    with pytest.raises(BadInputError, match="size must be one of 25, 50, 100, 200"):
        query_choice({"size": "7"}, "size", PAGE_SIZES, 50)
    assert query_text({"q": "cam"}, "q", 64) == "cam"
    with pytest.raises(BadInputError, match="at most 64"):
        query_text({"q": "x" * 65}, "q", 64)
    with pytest.raises(BadInputError, match="control characters"):
        query_text({"q": "a\x00b"}, "q", 64)
    assert row_id("12") == 12
    assert row_id("9" * 19) is None and row_id("-1") is None and row_id("\u0661") is None


def test_posts_from_other_sites_are_refused() -> None:
    host = "fleet.example:8443"
    assert same_origin(host, "https://fleet.example:8443", "same-origin")
    assert same_origin(host, None, None)  # not a browser: curl, a script
    assert same_origin(host, "null", "same-origin")
    assert not same_origin(host, "https://evil.example", None)
    assert not same_origin(host, "https://evil.example", "cross-site")
    assert not same_origin(host, None, "same-site")  # a sibling host


def test_a_selector_is_key_value_pairs() -> None:
    assert selector(" site=lab, tier = beta ,") == {"site": "lab", "tier": "beta"}
    assert selector("") == {}
    with pytest.raises(BadInputError, match="is not KEY=VALUE"):
        selector("site")


def test_wrong_tokens_are_limited_per_address_then_overall() -> None:
    limiter = LoginLimiter(per_address=5, overall=12, window_s=60, log_lines=100)
    for i in range(5):
        assert limiter.retry_after("10.0.0.1", 100 + i) == 0
        limiter.failed("10.0.0.1", 100 + i)
    # The sixth attempt waits until the first failure is a window old (at 160).
    assert limiter.retry_after("10.0.0.1", 110) == 50
    assert limiter.retry_after("10.0.0.2", 110) == 0  # another address is not held up
    assert limiter.retry_after("10.0.0.1", 159.5) == 1
    assert limiter.retry_after("10.0.0.1", 160) == 0
    assert limiter.refused == 2
    # 12 failures from all addresses within the window: everyone waits, until the oldest of
    # them is a window old.
    everyone = LoginLimiter(per_address=5, overall=12, window_s=60)
    for i in range(12):
        everyone.failed(f"10.0.1.{i}", 100 + i)
    assert everyone.retry_after("10.9.9.9", 112) == 48
    assert everyone.retry_after("10.9.9.9", 160.5) == 0


def test_wrong_tokens_are_logged_at_a_bounded_rate() -> None:
    limiter = LoginLimiter(per_address=1000, overall=1000, window_s=60, log_lines=3)
    lines = [limiter.failed(f"10.0.0.{i % 50}", 100 + i * 0.01) for i in range(200)]
    logged = [line for line in lines if line]
    assert len(logged) == 3
    later = limiter.failed("10.0.0.1", 170)
    assert later is not None and "197 more wrong token(s) not logged" in later


def test_the_limiter_forgets_addresses_once_their_window_ends() -> None:
    limiter = LoginLimiter(per_address=5, overall=100_000, window_s=60)
    for i in range(10_000):
        limiter.failed(f"10.{i >> 8}.{i & 255}.1", 100)
    limiter.retry_after("10.0.0.1", 161)
    assert limiter.retry_after("10.0.0.1", 161) == 0
    assert limiter.failed("10.0.0.1", 161) is not None


def test_sessions_are_bounded_expire_and_show_a_notice_once() -> None:
    sessions = Sessions()
    first, csrf = sessions.create("token-a", now=1000)
    assert sessions.get(first, now=1001) == (csrf, "token-a")
    assert sessions.get(first, now=1000 + SESSION_S) is None
    ids = [sessions.create(f"t{i}", now=5000)[0] for i in range(MAX_SESSIONS + 5)]
    assert sessions.get(ids[0], now=5001) is None  # the oldest went
    assert sessions.get(ids[-1], now=5001) is not None
    sessions.flash(ids[-1], "Rollout 3: pause done.")
    assert sessions.take_flash(ids[-1]) == "Rollout 3: pause done."
    assert sessions.take_flash(ids[-1]) == ""


def test_what_a_person_may_do_is_the_admin_apis_role_table() -> None:
    viewer = Person("vic", Role.VIEWER, "s", "c", "t")
    operator = Person("olga", Role.OPERATOR, "s", "c", "t")
    assert not viewer.may("CreateRollout") and operator.may("CreateRollout")
    assert operator.may("DeleteModelVersion") and not operator.may("CreateAdmin")
    assert viewer.may("WhoAmI") and not viewer.may("NoSuchMethod")  # unknown: admin only
