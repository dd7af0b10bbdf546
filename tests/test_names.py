"""One rule for names, versions and digests on the wire, used by the agent and the server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.names import is_name, is_sha256, is_version
from protos.topics import device_from_topic, device_name


@pytest.mark.parametrize("value", ["mobilenet", "m", "a.b-c_d", "x" * 64, "9lives"])
def test_names_that_pass(value: str) -> None:
    assert is_name(value)


@pytest.mark.parametrize(
    "value", ["", "x" * 65, "-m", ".hidden", "_m", "a/b", "a b", "m\n", "m+", "mødel", "a#"]
)
def test_names_that_do_not(value: str) -> None:
    # A trailing newline passed the regexes this rule replaced (re.match with "$").
    assert not is_name(value)


def test_digests_and_versions_match_whole() -> None:
    assert is_sha256("ab" * 32) and not is_sha256("ab" * 32 + "\n")
    assert not is_sha256("AB" * 32) and not is_sha256("ab" * 31)
    assert is_version("1.2.3-rc.1+build") and not is_version("1.0\n") and not is_version("1 0")


@given(st.text(max_size=70))
def test_a_name_is_a_safe_topic_level_and_file_name(value: str) -> None:
    if is_name(value):
        assert "/" not in value and "\n" not in value and not value.startswith(".")
        assert device_from_topic(f"edgefleet/v1/f/{value}/telemetry") == ("f", value, "telemetry")
    else:
        assert device_from_topic(f"edgefleet/v1/f/{value}/telemetry") is None or "/" in value


@pytest.mark.parametrize("requested", ["_cam", "-_cam", "._.lab", "__", "_"])
def test_a_derived_device_name_is_a_name(requested: str) -> None:
    # The server derives the device id from the requested name with device_name(); an id the
    # name rule refuses cannot be a topic level, so the agent refuses its own enrollment after
    # the server spent the token and registered the device (and retries: "_cam", "_cam-2"...).
    assert is_name(device_name(requested)), device_name(requested)


@given(st.text(max_size=80))
def test_every_derived_device_name_passes_the_name_rule(requested: str) -> None:
    assert is_name(device_name(requested))
    assert is_name(f"{device_name(requested)[:58]}-99")  # the id of a later same-name device
