from __future__ import annotations

import hashlib

from latest_server import keys


def test_key_is_sha1_of_the_id() -> None:
    assert keys.key_for("a/b") == hashlib.sha1(b"a/b").hexdigest()


def test_every_key_of_a_variable_shares_one_hash_tag() -> None:
    k = keys.key_for("sensor 1")
    names = [*keys.write_keys(k), keys.feed(k)]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.startswith(f"lv:{{{k}}}:")
        assert "sensor" not in name
