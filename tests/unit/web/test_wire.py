"""What web and worker say to each other through Redis (isol8_site/wire.py)."""

from __future__ import annotations

import time
import uuid

from isol8_site import wire
from isol8_site.redis import get_redis


def test_a_result_travels_as_its_json_untouched():
    raw = wire.ResultMessage(result=b'{"stdout":"hi \\u00e9"}').encode()
    assert wire.ResultMessage.decode(raw).result == b'{"stdout":"hi \\u00e9"}'
    assert wire.ResultMessage.decode(raw.encode()).result == b'{"stdout":"hi \\u00e9"}'


def test_an_error_keeps_its_code_and_a_message_with_spaces():
    message = wire.ResultMessage(error_code="setup_failed", message="Setup script failed (exit code 2): no such file")
    back = wire.ResultMessage.decode(message.encode())
    assert (back.result, back.error_code, back.message) == (None, "setup_failed", message.message)


def test_file_answers_round_trip():
    for answer in (wire.FileAnswer(data={"content": "aGk="}), wire.FileAnswer(error_code="not_found", message="gone")):
        assert wire.FileAnswer.decode(answer.encode()) == answer


def test_push_hands_an_answer_to_one_waiter_and_it_expires():
    key = wire.file_answer_key(uuid.uuid4())
    wire.push(key, "answer", ttl=5)
    assert 0 < get_redis().ttl(key) <= 5
    assert get_redis().blpop([key], timeout=1) == (key.encode(), b"answer")


def test_only_fresh_heartbeats_count_as_alive(settings):
    settings.ISOL8_RUN_QUEUE = f"wire-{uuid.uuid4().hex[:6]}"
    settings.ISOL8_HEARTBEAT_SECONDS = 1
    wire.beat("fresh", {"docker": True})
    get_redis().hset(wire.heartbeat_key(), "stale", '{"at": %f}' % (time.time() - 10))
    beats = wire.worker_beats()
    assert beats["fresh"]["docker"] is True and wire.alive_hosts(beats) == {"fresh"}
    wire.forget("fresh")
    assert wire.alive_hosts() == set()
    get_redis().delete(wire.heartbeat_key())


def test_keys_of_different_kinds_never_collide():
    some = uuid.uuid4()
    keys = {wire.result_key(some), wire.secrets_key(some), wire.file_answer_key(some), wire.cleanup_key(some)}
    assert len(keys) == 4
