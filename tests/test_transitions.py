from datetime import UTC, datetime

from orchestrator import gates
from orchestrator.errors import GateRejected, NodeTimeout
from orchestrator.ledger.events import ErrorInfo, NodeFailed, RetryScheduled
from orchestrator.node import Retry
from orchestrator.runtime.transitions import (
    Fail,
    Park,
    RetryLater,
    Succeed,
    after_failure,
    after_success,
    unit_random,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BOOM = ErrorInfo.of(RuntimeError("boom"))


def test_first_failure_with_retries_left_is_retried_after_the_seeded_delay() -> None:
    retry = Retry(max_attempts=3, base_delay=2.0, jitter=0.5)
    decision = after_failure(retry, 7, "fanout[3]", 1, BOOM, "error")
    assert decision == RetryLater(BOOM, retry.delay(1, unit_random(7, "fanout[3]", 1)))
    fields = decision.event_fields("fanout[3]", 1, NOW)
    event = RetryScheduled(seq=1, ts="t", **fields)
    assert (event.next_attempt, event.reason, event.delay) == (2, BOOM, decision.delay)
    assert fields["not_before"] > "2026-01-02T03:04:05"


def test_last_attempt_failing_exhausts_the_retries() -> None:
    decision = after_failure(Retry(max_attempts=3), 7, "n", 3, BOOM, "error")
    assert decision == Fail("retries_exhausted", BOOM)
    event = NodeFailed(seq=1, ts="t", **decision.event_fields("n", 3))
    assert (event.cause, event.attempt) == ("retries_exhausted", 3)


def test_a_non_retryable_error_class_fails_at_once_with_its_cause() -> None:
    retry = Retry(max_attempts=3, on=(KeyError,))
    assert after_failure(retry, 7, "n", 1, BOOM, "error") == Fail("error", BOOM)
    rejected = ErrorInfo.of(GateRejected("no"))
    assert after_failure(retry, 7, "n", 1, rejected, "rejected") == Fail("rejected", rejected)


def test_a_timeout_fails_as_a_timeout_or_is_retried_if_the_policy_says_so() -> None:
    timeout = ErrorInfo.of(NodeTimeout("exceeded its timeout of 1s"))
    assert after_failure(Retry(), 7, "n", 1, timeout, "timeout") == Fail("timeout", timeout)
    retried = after_failure(Retry(max_attempts=2, on=(NodeTimeout,)), 7, "n", 1, timeout, "timeout")
    assert isinstance(retried, RetryLater)


def test_jitter_is_reproducible_from_the_seed() -> None:
    retry = Retry(max_attempts=5, base_delay=10.0, jitter=1.0)
    first = after_failure(retry, 42, "n", 2, BOOM, "error")
    assert first == after_failure(retry, 42, "n", 2, BOOM, "error")
    delays = set()
    for seed in range(5):
        decision = after_failure(retry, seed, "n", 2, BOOM, "error")
        assert isinstance(decision, RetryLater)
        delays.add(decision.delay)
    assert len(delays) > 1
    assert 0 <= unit_random(42, "n", 2) < 1


def test_valid_outputs_succeed_or_park_at_the_nodes_gate() -> None:
    outputs = {"answer": 42}
    assert after_success(None, outputs) == Succeed(outputs)
    parked = after_success("review", outputs)
    assert parked == Park("review", outputs)
    fields = parked.event_fields("n", 1)
    assert (fields["gate"], fields["outputs"]) == ("review", outputs)
    assert fields["digest"] == gates.held_digest(outputs, fields["review"])


def test_a_policy_that_parks_keeps_the_node_due_instead_of_failing_it() -> None:
    retry = Retry(max_attempts=2, on=(KeyError,), exhausted="park")
    # out of attempts, or an error it does not retry: due again, once the run resumes
    assert after_failure(retry, 7, "n", 2, BOOM, "error") == RetryLater(BOOM, 0.0, park=True)
    assert after_failure(retry, 7, "n", 1, BOOM, "error") == RetryLater(BOOM, 0.0, park=True)
    # each resume grants one more attempt, parked again if it fails too
    assert after_failure(retry, 7, "n", 5, BOOM, "timeout").park
    # a person's rejection is a decision, not a failure to wait out
    rejected = gates.rejection("no")
    assert after_failure(retry, 7, "n", 2, rejected, "rejected") == Fail("rejected", rejected)


def test_parking_is_in_the_plan_digest_only_when_chosen() -> None:
    assert "exhausted" not in Retry(max_attempts=3).describe()
    assert Retry(exhausted="park").describe()["exhausted"] == "park"
