"""Reviewers' verdicts over HTTP: POST /api/anime/generation/{id}/review {"verdict": "good"|"bad", "note"}
(user or admin token; one verdict per reviewer, the latest wins) and GET /api/anime/reviews[?job_id=]."""

from __future__ import annotations

from animenb.store.jobs_common import JobStatus
from animenb.store.reviews_sqlite import SqliteReviewStore, check_review

from .auth import require_role
from .handlers import API, JOB_ID, BaseHandler
from .validation import APIError, parse_json_body


def review_store(service) -> SqliteReviewStore:
    """The service's review store (the job store's database), made on first use."""
    if getattr(service, "reviews", None) is None:
        service.reviews = SqliteReviewStore(service.store.db)
    return service.reviews


class ReviewHandler(BaseHandler):
    def post(self, job_id: str) -> None:
        identity = require_role(self, "user")
        job = self.get_job(job_id)
        if job.status is not JobStatus.SUCCEEDED:
            raise APIError(
                409,
                "not_finished",
                f"Only a finished output can be reviewed; job {job_id} is {job.status.value}.",
                "job_id",
            )
        data = parse_json_body(self.request.body, self.request.headers.get("Content-Type"))
        try:
            verdict, note = check_review(data.get("verdict"), data.get("note"))
        except ValueError as exc:
            raise APIError(422, "invalid_value", str(exc), "note" if "note" in str(exc) else "verdict") from None
        self.write_json(review_store(self.service).record(job.id, identity.name, verdict, note), status=201)


class ReviewsHandler(BaseHandler):
    def get(self) -> None:
        require_role(self, "user")
        job_id = self.get_query_argument("job_id", None)
        if job_id is not None:
            self.get_job(job_id)  # 404 for a job the caller may not read
        reviews = review_store(self.service).list(job_id)
        self.write_json({"reviews": reviews, "count": len(reviews)})


review_handlers = [
    (rf"{API}/generation/{JOB_ID}/review/?", ReviewHandler),
    (rf"{API}/reviews/?", ReviewsHandler),
]
