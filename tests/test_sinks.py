"""Delivery sinks against real things: a loopback HTTP server, files, a local object store
and moto's S3 server. Backoff goes through an injected sleep, so no test waits."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.codec import canonical_bytes
from orchestrator.errors import ConfigError
from orchestrator.sinks import (
    NOTICE,
    Delivery,
    GateNotice,
    Notice,
    ReceiptNotice,
    SinkConfig,
    deliver,
    notice_key,
    slack_payload,
)
from orchestrator.storage.objects import ObjectStore, check_key, open_object_store
from tests import http_peer as peers
from tests.http_peer import HttpPeer, unused_port
from tests.s3server import BUCKET, Moto

http_peer = peers.http_peer  # the shared fixture

SECRET = "SECRETXYZ"


class Sleeps:
    """An injected ``sleep`` that records the delays asked and returns at once."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def gate(review: str = "--- a/x.py\n+++ b/x.py\n-old\n+new\n", **changes: Any) -> GateNotice:
    fields: dict[str, Any] = {
        "run_id": "20260101-120000-abcdef",
        "node": "pr-author",
        "attempt": 2,
        "gate": "review",
        "digest": "ab" * 32,
        "review": review,
        "approve": "orchestrator approve 20260101-120000-abcdef review",
        "reject": "orchestrator reject 20260101-120000-abcdef review",
        "parked_at": "2026-01-01T12:00:00.000000Z",
    }
    return GateNotice(**(fields | changes))


def receipt(**changes: Any) -> ReceiptNotice:
    body: dict[str, Any] = {
        "period": {"from": "2026-01-01T12:00:00Z", "to": "2026-01-01T13:00:00Z"},
        "tokens_by_model": {"claude": 1_234_567},
        "totals": {"tokens": 1_234_567, "compute_h": 3.5, "spend_usd": 12.25},
        "remaining": {"tokens": 8_765_433, "compute_h": 96.5, "spend_usd": 87.75},
    }
    fields: dict[str, Any] = {
        "run_id": "20260101-120000-abcdef",
        "number": 7,
        "body": body,
        "signature": "c2ln",
        "key": "ed25519:KEY1",
    }
    return ReceiptNotice(**(fields | changes))


def check_slack_limits(payload: dict[str, Any]) -> None:
    """Every text object within Slack's documented limits."""
    assert 0 < len(payload["text"]) <= 3000
    assert 0 < len(payload["blocks"]) <= 50
    for block in payload["blocks"]:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= 3000
            fields = block.get("fields", [])
            assert len(fields) <= 10
            assert all(0 < len(f["text"]) <= 2000 for f in fields)
        else:
            assert block["type"] == "context"
            assert all(len(e["text"]) <= 2000 for e in block["elements"])


def sections(payload: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in payload["blocks"] if "text" in b and b["type"] == "section"]


def fields_of(payload: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in payload["blocks"]:
        for f in block.get("fields", []):
            label, _, value = f["text"].partition("\n")
            out[label.strip("*")] = value
    return out


# --------------------------------------------------------------------------- webhook


async def test_webhook_posts_the_notice_as_json_with_event_headers(http_peer: HttpPeer) -> None:
    sink = SinkConfig(kind="webhook", url=f"{http_peer.url}/hooks/in?token={SECRET}")
    notices: list[Notice] = [gate(), receipt()]
    for notice in notices:
        done = await deliver(sink, notice)
        assert done == Delivery(sink=f"webhook {http_peer.url}", ok=True, attempts=1)
    got = http_peer.wait_for(2)
    for request, notice in zip(got, notices, strict=True):
        assert request.method == "POST"
        assert request.path == f"/hooks/in?token={SECRET}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-orchestrator-event"] == notice.kind
        assert request.json == notice.model_dump(mode="json")
        assert request.body == canonical_bytes(notice.model_dump(mode="json"))
        assert NOTICE.validate_json(request.body) == notice
    assert got[0].headers["x-orchestrator-notice"] != got[1].headers["x-orchestrator-notice"]


# --------------------------------------------------------------------------- slack


async def test_slack_gate_message_with_a_50_kb_diff_fits_and_says_what_was_cut(
    http_peer: HttpPeer,
) -> None:
    lines = ["--- a/app.py", "+++ b/app.py", "@@ -1,3 +1,3 @@", "-x = '<!channel>'"]
    lines += ["```", "+ evil ``` fence", "````"]
    lines += [f"+line {i:05d} {'=' * 40}" for i in range(1000)]
    diff = "\n".join(lines)
    assert len(diff) > 50_000
    notice = gate(review=diff)
    done = await deliver(SinkConfig(kind="slack", url=f"{http_peer.url}/services/T/B/X"), notice)
    assert done.ok and done.attempts == 1
    (request,) = http_peer.wait_for(1)
    assert request.headers["content-type"] == "application/json"
    payload = request.json
    assert payload == slack_payload(notice)
    check_slack_limits(payload)

    header = payload["blocks"][0]
    assert header["text"]["text"] == "Approval needed: gate review"
    assert "pr-author" in payload["text"] and "review" in payload["text"]
    assert fields_of(payload) == {
        "Run": "`20260101-120000-abcdef`",
        "Node": "`pr-author`",
        "Attempt": "2",
        "Parked at": "2026-01-01T12:00:00.000000Z",
    }
    review, commands = sections(payload)
    assert review.count("```") == 2  # the diff's own fences cannot end the block early
    shown = review.split("```")[1].strip("\n").split("\n")
    assert shown[:3] == lines[:3]
    assert shown[3] == "-x = '&lt;!channel&gt;'"  # escaped: it cannot ping the channel
    assert [line.replace("\u200b", "") for line in shown[4:7]] == lines[4:7]
    assert 10 < len(shown) < len(lines)
    cut = len(lines) - len(shown)
    assert review.endswith(f"_{cut:,} more lines not shown ({len(lines):,} in all)_")
    assert f"```{notice.approve}```" in commands
    assert f"```{notice.reject}```" in commands
    assert commands.index("approve") < commands.index("reject")


def test_slack_gate_message_stays_within_limits_whatever_the_sizes() -> None:
    notice = gate(
        review="+" + "<&>" * 40_000,  # one enormous line, every character escaped
        gate="g" * 500,
        node="n" * 5000,
        run_id="r" * 5000,
        approve="orchestrator approve " + "x" * 5000,
        reject="orchestrator reject " + "y" * 5000,
        digest="d" * 3000,
        parked_at="t" * 3000,
    )
    payload = slack_payload(notice)
    check_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"].endswith("…")
    review = sections(payload)[0]
    assert "&lt;&amp;&gt;" in review and "…" in review
    assert "not shown" not in review  # the one line is shortened, none is cut


def test_slack_gate_message_with_an_empty_review_says_so() -> None:
    payload = slack_payload(gate(review=""))
    check_slack_limits(payload)
    assert "(no review text)" in sections(payload)[0]


async def test_slack_receipt_message_has_the_totals_as_fields(http_peer: HttpPeer) -> None:
    notice = receipt()
    sink = SinkConfig(kind="slack", url=http_peer.url + "/services/T/B/X")
    assert (await deliver(sink, notice)).ok
    payload = http_peer.wait_for(1)[0].json
    check_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"] == "Budget receipt #7"
    assert fields_of(payload) == {
        "Run": "`20260101-120000-abcdef`",
        "Period": "2026-01-01T12:00:00Z → 2026-01-01T13:00:00Z",
        "Tokens": "1,234,567",
        "Compute-hours": "3.50 h",
        "Spend": "$12.25",
        "Remaining": "8,765,433 tokens · 96.50 h · $87.75",
    }
    assert "Budget receipt #7" in payload["text"] and "$12.25" in payload["text"]
    assert "ed25519:KEY1" in payload["blocks"][-1]["elements"][0]["text"]

    unlimited = receipt(body={**notice.body, "remaining": None, "totals": {"tokens": "many"}})
    fields = fields_of(slack_payload(unlimited))
    assert fields["Remaining"] == "no ceiling"
    assert fields["Tokens"] == "many" and fields["Spend"] == "—"
    spend_only = {"tokens": 2**62 - 5, "compute_h": 1e18, "spend_usd": 3.5}
    fields = fields_of(slack_payload(receipt(body={**notice.body, "remaining": spend_only})))
    assert fields["Remaining"] == "$3.50"  # what --budget spend=… left unlimited is left out


# --------------------------------------------------------------------------- retries


async def test_5xx_is_retried_with_backoff_until_it_succeeds(http_peer: HttpPeer) -> None:
    http_peer.fail_next(2, 500)
    sleeps = Sleeps()
    done = await deliver(SinkConfig(kind="webhook", url=http_peer.url), gate(), sleep=sleeps)
    assert done.ok and done.attempts == 3 and done.error is None
    got = http_peer.wait_for(3)
    assert len(got) == 3 and len({r.body for r in got}) == 1
    assert sleeps.asked == [0.5, 1.0]


async def test_429_honours_retry_after_capped_at_30_s(http_peer: HttpPeer) -> None:
    http_peer.fail_next(1, 429, retry_after="7")
    http_peer.fail_next(1, 429, retry_after="3600")
    http_peer.fail_next(1, 429)  # no Retry-After: plain backoff
    sleeps = Sleeps()
    sink = SinkConfig(kind="slack", url=http_peer.url)
    done = await deliver(sink, receipt(), sleep=sleeps, base_delay=0.25)
    assert done.ok and done.attempts == 4
    assert sleeps.asked == [7.0, 30.0, 1.0]
    assert len(http_peer.requests) == 4


async def test_4xx_is_not_retried_and_the_error_hides_the_url(http_peer: HttpPeer) -> None:
    path = f"/services/T000/B000/{SECRET}"
    http_peer.fail_next(1, 404, body=f"no_service at {path}".encode())
    sleeps = Sleeps()
    sink = SinkConfig(kind="slack", url=http_peer.url + path)
    done = await deliver(sink, gate(), sleep=sleeps)
    assert not done.ok and done.attempts == 1 and sleeps.asked == []
    assert done.error is not None and done.error.startswith("HTTP 404: no_service at")
    assert SECRET not in done.error and SECRET not in done.sink
    assert len(http_peer.requests) == 1

    http_peer.fail_next(1, 400, body=b"invalid_payload")
    done = await deliver(sink, gate(), sleep=sleeps)
    assert (done.ok, done.attempts, done.error) == (False, 1, "HTTP 400: invalid_payload")


async def test_a_dropped_connection_is_retried(http_peer: HttpPeer) -> None:
    http_peer.drop_next(2)
    sleeps = Sleeps()
    done = await deliver(SinkConfig(kind="webhook", url=http_peer.url), gate(), sleep=sleeps)
    assert done.ok and done.attempts == 3 and len(sleeps.asked) == 2
    assert len(http_peer.wait_for(3)) == 3


async def test_a_server_that_is_down_gives_a_failed_delivery_not_an_exception() -> None:
    url = f"http://127.0.0.1:{unused_port()}/services/T000/B000/{SECRET}"
    sleeps = Sleeps()
    done = await deliver(SinkConfig(kind="slack", url=url), gate(), attempts=4, sleep=sleeps)
    assert not done.ok and done.attempts == 4
    assert done.error is not None and "ConnectError" in done.error
    assert SECRET not in done.error and SECRET not in done.sink
    assert sleeps.asked == [0.5, 1.0, 2.0]

    sleeps = Sleeps()
    done = await deliver(
        SinkConfig(kind="webhook", url=url), gate(), attempts=6, base_delay=10, sleep=sleeps
    )
    assert done.attempts == 6 and sleeps.asked == [10, 20, 30, 30, 30]


async def test_bad_arguments_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="attempts"):
        await deliver(SinkConfig(kind="file", url="x"), gate(), attempts=0)


# --------------------------------------------------------------------------- env: URLs


async def test_env_url_is_read_at_delivery_time(
    http_peer: HttpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = SinkConfig.parse("slack=env:ORCH_TEST_SLACK_URL")
    assert sink.describe() == "slack env:ORCH_TEST_SLACK_URL"
    monkeypatch.delenv("ORCH_TEST_SLACK_URL", raising=False)
    assert await deliver(sink, gate()) == Delivery(
        sink="slack env:ORCH_TEST_SLACK_URL",
        ok=False,
        attempts=0,
        error="environment variable ORCH_TEST_SLACK_URL is not set",
    )
    assert http_peer.requests == []

    monkeypatch.setenv("ORCH_TEST_SLACK_URL", f"{http_peer.url}/services/T000/B000/{SECRET}")
    done = await deliver(sink, gate())
    assert done.ok and done.attempts == 1
    assert http_peer.wait_for(1)[0].path == f"/services/T000/B000/{SECRET}"

    http_peer.fail_next(1, 403, body=f"bad token {SECRET}".encode())
    done = await deliver(sink, gate())
    assert done.error is not None and done.error.startswith("HTTP 403")
    assert SECRET not in done.error

    monkeypatch.setenv("ORCH_TEST_SLACK_URL", f"hooks.slack.com/{SECRET}")
    done = await deliver(sink, gate())
    assert (done.ok, done.attempts) == (False, 0)
    assert done.error == "environment variable ORCH_TEST_SLACK_URL does not hold an http(s) URL"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "kind", "url", "described"),
    [
        ("slack=env:SLACK_URL", "slack", "env:SLACK_URL", "slack env:SLACK_URL"),
        (
            f"webhook=http://127.0.0.1:8080/services/T000/B000/{SECRET}?token={SECRET}",
            "webhook",
            f"http://127.0.0.1:8080/services/T000/B000/{SECRET}?token={SECRET}",
            "webhook http://127.0.0.1:8080",
        ),
        (
            f"slack=https://user:{SECRET}@hooks.slack.com/services/{SECRET}",
            "slack",
            f"https://user:{SECRET}@hooks.slack.com/services/{SECRET}",
            "slack https://hooks.slack.com",
        ),
        ("webhook=http://[::1]:9/x", "webhook", "http://[::1]:9/x", "webhook http://[::1]:9"),
        ("file=receipts.jsonl", "file", "receipts.jsonl", "file receipts.jsonl"),
        (" FILE = out/a=b.jsonl ", "file", "out/a=b.jsonl", "file out/a=b.jsonl"),
        (
            "s3=s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
            "s3",
            "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
            "s3 s3://bucket/prefix",
        ),
        ("s3=/var/objects", "s3", "/var/objects", "s3 /var/objects"),
    ],
)
def test_parse_good_forms(text: str, kind: str, url: str, described: str) -> None:
    sink = SinkConfig.parse(text)
    assert (sink.kind, sink.url) == (kind, url)
    assert sink.describe() == described
    assert SECRET not in sink.describe()
    assert SinkConfig.model_validate_json(sink.model_dump_json()) == sink


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "write KIND=URL"),
        ("slack", "write KIND=URL"),
        (f"https://hooks.slack.com/services/{SECRET}", "write KIND=URL"),
        ("email=me@example.com", "unknown kind 'email'"),
        ("slack=", "the URL is empty"),
        (f"slack=ftp://hooks.slack.com/{SECRET}", "http(s)://HOST"),
        (f"webhook=http:///{SECRET}", "http(s)://HOST"),
        (f"webhook=http://host:99999/{SECRET}", "http(s)://HOST"),
        ("webhook=env:1BAD", "not an environment variable name"),
        ("s3=ftp://bucket/x", "s3://BUCKET/PREFIX"),
        ("file=a\0b", "NUL"),
    ],
)
def test_parse_bad_forms_give_one_clear_paragraph(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SinkConfig.parse(text)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message and SECRET not in message


def test_the_config_is_frozen_strict_and_its_errors_hide_the_url() -> None:
    sink = SinkConfig(kind="webhook", url="http://h/x")
    with pytest.raises(ValidationError):
        sink.url = "http://other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SinkConfig(kind="webhook", url="http://h/x", token="t")  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as caught:
        SinkConfig(kind="slack", url=f"ftp://hooks/{SECRET}")
    assert SECRET not in str(caught.value)


def test_notices_parse_back_by_their_kind() -> None:
    for notice in (gate(), receipt()):
        again = NOTICE.validate_json(json.dumps(notice.model_dump(mode="json")))
        assert type(again) is type(notice) and again == notice


# --------------------------------------------------------------------------- file


async def test_concurrent_file_deliveries_append_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sink = SinkConfig.parse("file=deep/er/receipts.jsonl")  # relative, parents created
    # each line (~100 KB) is far larger than any stdio buffer, so split writes would tear
    notices = [gate(review=f"{i:03d}" * 33_000, attempt=i) for i in range(50)]
    results = await asyncio.gather(*(deliver(sink, n) for n in notices))
    assert all(r.ok and r.attempts == 1 for r in results)
    data = (tmp_path / "deep/er/receipts.jsonl").read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 51
    got = [GateNotice.model_validate_json(line) for line in lines[:-1]]
    assert sorted(got, key=lambda n: n.attempt) == notices
    assert set(lines[:-1]) == {canonical_bytes(n.model_dump(mode="json")) for n in notices}

    assert (await deliver(sink, receipt())).ok  # appends, never truncates
    assert (tmp_path / "deep/er/receipts.jsonl").read_bytes().startswith(data)


async def test_a_file_sink_that_cannot_be_written_fails_without_raising(tmp_path: Path) -> None:
    sleeps = Sleeps()
    done = await deliver(SinkConfig(kind="file", url=str(tmp_path)), gate(), sleep=sleeps)
    assert not done.ok and done.attempts == 1 and sleeps.asked == []  # EISDIR: not retried
    assert done.error is not None and "Is a directory" in done.error


# --------------------------------------------------------------------------- s3


def test_notice_keys_are_valid_and_distinct() -> None:
    assert notice_key(receipt()) == "notices/20260101-120000-abcdef/receipt-7.json"
    assert notice_key(gate()) == "notices/20260101-120000-abcdef/gate-pr-author-2.json"
    odd = [gate(node="pkg[3]/build"), gate(node="pkg[3]_build"), gate(run_id="..")]
    keys = [notice_key(n) for n in odd]
    assert all(check_key(k) == k for k in keys) and len(set(keys)) == 3
    assert check_key(notice_key(gate(node="é" * 300, run_id="r/" * 200)))


async def test_s3_sink_into_a_local_directory_store(tmp_path: Path) -> None:
    sink = SinkConfig.parse(f"s3={tmp_path / 'objects'}")
    notices: list[Notice] = [gate(), receipt(), gate(node="pkg[3]")]
    for notice in notices:
        assert await deliver(sink, notice) == Delivery(
            sink=f"s3 {tmp_path / 'objects'}", ok=True, attempts=1
        )
    with open_object_store(str(tmp_path / "objects")) as store:
        assert len(store.list("notices/")) == 3
        for notice in notices:
            stored = store.get(notice_key(notice))
            assert stored == canonical_bytes(notice.model_dump(mode="json"))
            assert NOTICE.validate_json(stored) == notice


async def test_s3_sink_against_an_s3_server(moto: Moto) -> None:
    prefix = f"sinks/{uuid.uuid4().hex}"
    sink = SinkConfig.parse(f"s3={moto.url(prefix)}")
    assert sink.describe() == f"s3 s3://{BUCKET}/{prefix}"
    cache: dict[str, ObjectStore] = {}
    try:
        for notice in (gate(), receipt()):
            done = await deliver(sink, notice, objects_cache=cache)
            assert done.ok and done.attempts == 1
            got = moto.client.get_object(Bucket=BUCKET, Key=f"{prefix}/{notice_key(notice)}")
            assert got["Body"].read() == canonical_bytes(notice.model_dump(mode="json"))
        assert list(cache) == [sink.url]  # opened once, shared
    finally:
        for store in cache.values():
            store.close()


async def test_an_unreachable_s3_server_is_retried_then_reported(aws_env: None) -> None:
    url = f"s3://{BUCKET}/x?endpoint=http://127.0.0.1:{unused_port()}&max_attempts=1"
    sleeps = Sleeps()
    done = await deliver(SinkConfig(kind="s3", url=url), receipt(), attempts=3, sleep=sleeps)
    assert not done.ok and done.attempts == 3
    assert sleeps.asked == [0.5, 1.0]
    assert done.error is not None and re.search(r"cannot (write|reach)", done.error)


def test_slack_summary_message_keeps_the_text_escaped_and_within_limits() -> None:
    from orchestrator.sinks import SummaryNotice

    notice = SummaryNotice(
        run_id="r" * 3000, name="flaky-hunt", title="T" * 400, text="<!channel> done\n" * 5000
    )
    payload = slack_payload(notice)
    check_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"].endswith("…")
    body = payload["blocks"][1]["text"]["text"]
    assert "&lt;!channel&gt; done" in body and "<!channel>" not in body
