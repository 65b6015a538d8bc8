"""jsr.runtime: the on/off environment variables every part reads the same way."""

import pytest

from jsr import compile_cache, host_memory
from jsr.runtime import env_flag


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("yes", True), (" TRUE ", True), ("0", False), ("no", False), ("False", False), ("", False)],
)
def test_env_flag_reads_on_and_off_words(monkeypatch, value, on):
    monkeypatch.setenv("JSR_TEST_FLAG", value)
    assert env_flag("JSR_TEST_FLAG") is on
    monkeypatch.setenv(compile_cache.DISABLE_ENV, value)
    assert compile_cache.disabled_by_env() is on
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", *host_memory.USER_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(host_memory.DISABLE_ENV, value)
    assert host_memory.user_chose() is on


def test_env_flag_unset_is_off(monkeypatch):
    monkeypatch.delenv("JSR_TEST_FLAG", raising=False)
    assert not env_flag("JSR_TEST_FLAG")
