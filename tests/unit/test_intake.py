"""worker/intake.py's checks on real kombu messages: what a worker refuses to hand Celery,
and the reason it gives (field, value, what is allowed)."""

from __future__ import annotations

import base64
import bz2
import json
import re
from typing import Any

import pytest
from kombu import Message
from kombu.serialization import prepare_accept_content
from kombu.transport.virtual import Channel as VirtualChannel

from svdq.shared.constants import TASK_CALLBACK, TASK_GENERATE
from svdq.shared.errors import InvalidJobError
from svdq.worker.brokerguard import CheckedMessage, NotAMessage, _envelope_problem, transport_for
from svdq.worker.intake import (
    ARGUMENT_CHECKS,
    MAX_MESSAGE_BYTES,
    capped_timelimit,
    check_message,
)

SPEC = {"image": "s3://b/inputs/x.png", "variant": "tiny", "job_id": "job-1", "seed": 1}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
GENERATE = {TASK_GENERATE: ARGUMENT_CHECKS[TASK_GENERATE]}


def message(body: Any, headers: Any = None, content_type: str = "application/json") -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(
        body=raw,
        content_type=content_type,
        content_encoding="utf-8",
        headers={"task": TASK_GENERATE, "id": "job-1"} if headers is None else headers,
        accept=prepare_accept_content(["json"]),
    )


def test_a_good_job_passes() -> None:
    check_message(message([[SPEC], {}, EMBED]), GENERATE)


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        ({"a": 1}, None, "body={'a': 1} is not allowed: [args, kwargs, embed]"),
        ([[SPEC], {}], None, "[args, kwargs, embed]"),
        ([SPEC, {}, EMBED], None, "args a list"),
        ([[SPEC], {}, {**EMBED, "chain": [{"task": "x"}]}], None, "embed="),
        ([[SPEC, 1], {}, EMBED], None, "exactly one positional argument"),
        ([[], {"spec": SPEC}, EMBED], None, "exactly one positional argument"),
        ([[{**SPEC, "num_frames": "many"}], {}, EMBED], None, "num_frames"),
        ([[{**SPEC, "colour": "red"}], {}, EMBED], None, "unknown field 'colour'"),
        (
            [[{k: v for k, v in SPEC.items() if k != "job_id"}], {}, EMBED],
            None,
            "job_id is missing",
        ),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": "job-2"}, "must be equal"),
        ([[SPEC], {}, EMBED], {"task": "celery.accumulate", "id": "job-1"}, "not served here"),
        ([[SPEC], {}, EMBED], {}, "protocol 2"),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": 7}, "id=7 is not allowed"),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": "job-1", "timelimit": 3}, "timelimit"),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": "job-1", "eta": "soon"}, "eta="),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": "job-1", "retries": "1"}, "retries"),
        ([[SPEC], {}, EMBED], {"task": TASK_GENERATE, "id": "job-1", "shadow": 1}, "shadow"),
        (b"\x00\xffnot json{", None, "could not be read"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), None, f"MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}"),
    ],
)
def test_what_a_worker_refuses(body: Any, headers: Any, says: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        check_message(message(body, headers), GENERATE)
    assert says in str(caught.value)


@pytest.mark.parametrize("limits", [[float("nan")] * 2, [-5, -5], [0, 10], [float("inf"), None]])
def test_a_time_limit_that_would_end_the_job_at_once_is_refused(limits: list[Any]) -> None:
    """Review finding 8: NaN or a negative limit made the job 'time out' at once."""
    headers = {"task": TASK_GENERATE, "id": "job-1", "timelimit": limits}
    with pytest.raises(InvalidJobError, match=r"timelimit=.* is not allowed: \[hard, soft\]"):
        check_message(message([[SPEC], {}, EMBED], headers), GENERATE)


def test_time_limits_above_the_worker_s_own_are_capped() -> None:
    assert capped_timelimit([1e9, 1e9], 300, 270) == [300, 270]
    assert capped_timelimit([100, 90], 300, 270) == [100, 90]
    assert capped_timelimit([None, 1e9], 300, 270) == [None, 270]
    assert capped_timelimit([1e9, 1e9], None, None) == [1e9, 1e9]


def test_pickle_is_refused_unread() -> None:
    """kombu refuses the content type before unpickling; the reason keeps its words."""
    with pytest.raises(InvalidJobError, match="Refusing to deserialize untrusted content"):
        check_message(message(b"\x80\x04K\x01.", None, "application/x-python-serialize"), GENERATE)


def test_a_callback_message() -> None:
    served = {TASK_CALLBACK: ARGUMENT_CHECKS[TASK_CALLBACK]}
    headers = {"task": TASK_CALLBACK, "id": "cb-1"}
    check_message(message([["job-1", "succeeded"], {}, EMBED], headers), served)
    takes = "takes \\(job_id: str, status: one of succeeded, failed, cancelled\\)"
    # Review finding 4: a URL and a payload in the message are what made it a signing oracle.
    for args in (["https://x/hook", {"job_id": "j"}], ["job-1"], ["job-1", "running"]):
        with pytest.raises(InvalidJobError, match=takes):
            check_message(message([args, {}, EMBED], headers), served)
    with pytest.raises(InvalidJobError, match=re.escape("job_id='../x' is not allowed")):
        check_message(message([["../x", "failed"], {}, EMBED], headers), served)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ([1, 2], "an item of type list is not a message"),
        ({"body": "x"}, "properties=None is not allowed"),
        ({"properties": {"delivery_tag": "t"}, "headers": [1]}, "headers=[1] is not allowed"),
        ({"properties": {"delivery_tag": "t"}, "body": 5}, "body=5 is not allowed"),
    ],
)
def test_a_queue_item_that_is_not_a_message(payload: Any, says: str) -> None:
    with pytest.raises(NotAMessage, match=re.escape(says)) as caught:
        CheckedMessage(payload)
    assert json.loads(caught.value.raw) == payload


def envelope(**properties: Any) -> dict[str, Any]:
    """What kombu's Redis publisher LPUSHes, with `properties` overriding its own."""
    info = {"exchange": "", "routing_key": "svdq.tiny"}
    props = {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": info}
    return {
        "body": "eA==",
        "content-type": "application/json",
        "headers": {},
        "properties": {**props, **properties},
    }


@pytest.mark.parametrize(
    ("properties", "says"),
    [  # each made kombu raise in the worker's main process (review finding 1)
        ({"body_encoding": "rot13"}, "body_encoding='rot13' is not allowed: one of base64, utf-8"),
        ({"body_encoding": 5}, "body_encoding=5 is not allowed"),
        ({"delivery_tag": [1]}, "delivery_tag=[1] is not allowed: a string"),
        ({"delivery_tag": {"a": 1}}, "delivery_tag={'a': 1} is not allowed"),
        ({"delivery_info": "x"}, "delivery_info='x' is not allowed: an object with string"),
        ({"delivery_info": {"exchange": ""}}, "delivery_info={'exchange': ''} is not allowed"),
    ],
)
def test_an_envelope_kombu_would_trip_on(properties: dict[str, Any], says: str) -> None:
    with pytest.raises(NotAMessage, match=re.escape(says)):
        CheckedMessage(envelope(**properties))


def test_a_compressed_message_is_refused_before_kombu_inflates_it() -> None:
    """Review finding 2: kombu's Message.__init__ decompresses any registered codec."""
    bomb = envelope()
    bomb["headers"] = {"compression": "application/x-bz2"}
    bomb["body"] = base64.b64encode(bz2.compress(b"0" * 2**20)).decode()
    with pytest.raises(NotAMessage, match="compression='application/x-bz2' is not allowed"):
        CheckedMessage(bomb)


def test_what_kombu_publishes_passes_the_envelope_check() -> None:
    codecs = VirtualChannel.codecs
    assert _envelope_problem(envelope(), codecs) is None
    assert _envelope_problem(envelope(body_encoding="UTF-8", delivery_tag="u"), codecs) is None


def test_the_guarded_transport_follows_the_url_scheme() -> None:
    assert transport_for("redis://:pw@h:6379/0") == "svdq.worker.brokerguard:Transport"
    assert transport_for("rediss://h:6380/0") == "svdq.worker.brokerguard:Transport"
    assert transport_for("sentinel://h:26379") == "svdq.worker.brokerguard:SentinelTransport"
    assert transport_for("unix:///run/redis.sock") is None
