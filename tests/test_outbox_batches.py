"""The batched outbox steps (issue 17): one claim for many, grouped hand-over marks and sent
records, each still fenced by its claim's attempt number, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from campaigns.delivery import outbox
from campaigns.models import Delivery, DeliveryStatus, WebhookEvent, utcnow
from tests.chaos.support import add_inactive
from worker.passes import run_pass


def planned(rt, count: int) -> list[int]:
    add_inactive(rt, count)
    return sorted(run_pass(rt, lambda ids: len(ids)).result.queued_ids)


def rows(rt) -> dict[int, Delivery]:
    with Session(rt.engine) as session:
        return {d.id: d for d in session.exec(select(Delivery))}


def test_one_claim_takes_only_the_queued_and_due_and_fences_each(make_runtime, tmp_path):
    rt = make_runtime(f"maildir://{tmp_path / 'out'}")
    ids = planned(rt, 5)
    with Session(rt.engine, expire_on_commit=False) as session:
        first = outbox.claim_many(session, ids[:2], now=utcnow(), worker="w1")
        assert [d.id for d in first] == ids[:2]
        # Already claimed ones are someone else's now: only the three still queued are taken.
        again = outbox.claim_many(session, ids, now=utcnow(), worker="w2")
        assert [d.id for d in again] == ids[2:]
        assert {d.attempts for d in first + again} == {1}
        assert outbox.claim_many(session, ids, now=utcnow()) == []
    assert {r.claimed_by for r in rows(rt).values()} == {"w1", "w2"}


def test_marks_and_records_apply_only_while_the_claim_is_current(make_runtime, tmp_path):
    rt = make_runtime(f"maildir://{tmp_path / 'out'}")
    ids = planned(rt, 3)
    now = utcnow()
    with Session(rt.engine, expire_on_commit=False) as session:
        claimed = outbox.claim_many(session, ids, now=now, worker="w1")
        stale, *current = claimed
        # The first was settled and claimed again by another worker meanwhile (attempts 2).
        outbox.release(session, stale, now=now, error="settled")
        with Session(rt.engine) as other:
            assert outbox.claim_many(other, [stale.id], now=now, worker="w2")[0].attempts == 2

        marked = outbox.mark_handing_over_many(
            session, {f"<m{d.id}@acme.example>": d for d in claimed}, now=now)
        assert marked == {d.id for d in current}
        recorded = outbox.finish_sent(session, claimed, now=now)
        assert recorded == {d.id for d in current}
    after = rows(rt)
    assert after[stale.id].status == DeliveryStatus.sending and after[stale.id].message_id is None
    for d in current:
        assert after[d.id].status == DeliveryStatus.sent
        assert after[d.id].message_id == f"<m{d.id}@acme.example>"
        assert after[d.id].sent_at is not None
    with Session(rt.engine) as session:
        announced = sorted(e.delivery_id for e in session.exec(select(WebhookEvent)) if e.kind == "sent")
    assert announced == sorted(d.id for d in current)  # one `sent` event each, none for the stale one


def test_a_mark_and_the_previous_chunks_records_are_one_transaction(make_runtime, tmp_path):
    rt = make_runtime(f"maildir://{tmp_path / 'out'}")
    ids = planned(rt, 4)
    now = utcnow()
    with Session(rt.engine, expire_on_commit=False) as session:
        claimed = outbox.claim_many(session, ids, now=now)
        done, following = claimed[:2], claimed[2:]
        outbox.mark_handing_over_many(session, {f"<m{d.id}@x>": d for d in done}, now=now)
        outbox.mark_handing_over_many(session, {f"<m{d.id}@x>": d for d in following},
                                      now=now + timedelta(seconds=1), sent=done)
    after = rows(rt)
    assert [after[d.id].status for d in done] == [DeliveryStatus.sent] * 2
    assert [(after[d.id].status, after[d.id].message_id) for d in following] == [
        (DeliveryStatus.sending, f"<m{d.id}@x>") for d in following]
