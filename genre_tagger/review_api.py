"""The review store over HTTP (`serve.py --review review.sqlite`): the page at /review and its JSON endpoints.

    GET  /v1/review/next         the next title to review (by the queue's strategy) and the progress count
    GET  /v1/review/{id}         one title, with every decision made on it
    POST /v1/review/{id}         a decision: {"reviewer": "ann", "action": "accept", "genres": [...], "version": 3}

Reviewer names are free text, recorded with each decision: they say who decided, they are not
authentication. Anyone who can reach the server can decide as any name (serve.py listens on 127.0.0.1
unless --host says otherwise). The store's calls block on the database, so the endpoints are plain
functions: FastAPI runs them on its thread pool, off the event loop that the tagging API needs.
"""

import json
from typing import Literal

from genre_tagger.common import printable
from genre_tagger.review import (
    MAX_DB_ID,
    MAX_REQUEST_ID_CHARS,
    MAX_REVIEWER_CHARS,
    AlreadyDecided,
    NotFound,
    StoreGone,
    StoreUnavailable,
    text_problem,
)
from genre_tagger.serving import API_VERSION, WEB_FOLDER

MAX_EXCLUDED = 100  # ids a client may ask the queue to pass over (the titles it is showing other reviewers)
MAX_GENRES = 200
_EXAMPLE = {"reviewer": "ann", "action": "accept", "genres": ["Crime", "Drama"], "version": None}


def _decision_schema():
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class DecisionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [_EXAMPLE]})

        reviewer: str = Field(
            description=f"who decides: free text of 1 to {MAX_REVIEWER_CHARS} characters, recorded with the "
            "decision (a name, not authentication)"
        )
        action: Literal["accept", "skip", "undo"] = Field(
            description="accept: the title's genres are `genres` (default: the suggestion); skip: pass over it "
            "(it leaves the queue); undo: the decision that stands is undone and the one before stands again"
        )
        genres: list[str] | None = Field(
            None,
            max_length=MAX_GENRES,
            description="with accept: the genres as decided, names of the run's genres (added and removed ones are "
            "recorded against the suggestion)",
        )
        version: int | None = Field(
            None,
            ge=0,
            le=MAX_DB_ID,
            description="the title's `version` as shown (null: no decision yet). Another version now means someone "
            "decided first: 409 with the title as it stands. Left out: accept and skip expect a title still to "
            "review, undo undoes the decision that stands",
        )
        request_id: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_REQUEST_ID_CHARS,
            description="a key the client makes up per decision: sending it again (a retry after a lost answer) "
            "returns the decision already made instead of making a second one",
        )

        @field_validator("reviewer", "request_id")
        @classmethod
        def _plain(cls, value, info):
            if value is not None and (problem := text_problem(value, info.field_name, MAX_REVIEWER_CHARS)):
                raise ValueError(problem)
            return value

        @field_validator("genres")
        @classmethod
        def _names(cls, value):
            for i, genre in enumerate(value or ()):
                if problem := text_problem(genre, f"genres[{i}]", 200):
                    raise ValueError(problem)
            return value

    return DecisionRequest


def _message(errors):
    parts = []
    for error in errors:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.get("loc", ()))
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field; the fields are reviewer, action, genres, version, request_id"
        elif error.get("type") == "model_type":
            message = 'body must be a JSON object like {"reviewer": "ann", "action": "accept"}'
        parts.append(f"{where.lstrip('.')}: {message}" if where else message)
    return "; ".join(dict.fromkeys(parts))


def mount_review(app, store, strategy="uncertain"):
    """Add the review page and endpoints for `store` (a ReviewStore) to the app; `strategy` orders the queue."""
    from fastapi import Path, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse

    DecisionRequest = _decision_schema()
    item_id_path = Path(ge=1, le=MAX_DB_ID, description="the title's id in the review store")

    def refused(status, message, **extra):
        return JSONResponse({"error": message, **extra}, status_code=status)

    def guarded(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except NotFound as err:
            return refused(404, str(err))
        except AlreadyDecided as err:
            return refused(409, str(err), item=err.item)
        except StoreGone as err:
            return refused(410, str(err))
        except StoreUnavailable as err:
            return refused(503, f"{err}; retry shortly")
        except Exception as err:
            from genre_tagger import UserError

            if isinstance(err, UserError):
                return refused(422, str(err))
            raise

    @app.get(f"/{API_VERSION}/review/next", summary="The next title to review, and how many are left", tags=["review"])
    def next_title(
        strategy_choice: Literal["uncertain", "audit", "import"] | None = Query(
            None,
            alias="strategy",
            description=f"uncertain (closest to a genre's default threshold first), audit (the most likely "
            f"mislabelled first) or import (import order); default: the server's --review-strategy ({strategy})",
        ),
        exclude: str | None = Query(
            None,
            max_length=20 * MAX_EXCLUDED,
            description=f"up to {MAX_EXCLUDED} comma-separated title ids to pass over (titles being shown elsewhere)",
        ),
    ):
        excluded = []
        for part in (exclude or "").split(","):
            part = part.strip()
            if not part:
                continue
            if not (part.isascii() and part.isdigit() and len(part) <= 19 and int(part) <= MAX_DB_ID):
                return refused(422, f"exclude: {printable(part)[:40]!r} is not a title id")
            excluded.append(int(part))
        if len(excluded) > MAX_EXCLUDED:
            return refused(422, f"exclude: at most {MAX_EXCLUDED} ids, got {len(excluded)}")

        def answer():
            chosen = strategy_choice or strategy
            return {"strategy": chosen, "item": store.next_item(chosen, excluded), "progress": store.progress()}

        return guarded(answer)

    @app.get(f"/{API_VERSION}/review/{{item_id}}", summary="One title and every decision made on it", tags=["review"])
    def title(item_id: int = item_id_path):
        def answer():
            return {"item": store.item(item_id), "decisions": store.decisions(item_id)}

        return guarded(answer)

    @app.post(
        f"/{API_VERSION}/review/{{item_id}}",
        summary="Record a decision on a title (accept with genres, skip, undo)",
        tags=["review"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DecisionRequest.model_json_schema()}},
            }
        },
        responses={
            200: {"description": "recorded (committed to the database) and the title as it now stands"},
            404: {"description": "no such title"},
            409: {"description": "someone decided first: `item` is the title as it stands"},
            410: {"description": "the store's file was deleted or replaced while serving: nothing was recorded"},
            422: {"description": "the body is not a valid decision"},
            503: {"description": "the database is busy or unreachable: nothing was recorded; retry"},
        },
    )
    async def decide(request: Request, item_id: int = item_id_path):
        """Acknowledged only once committed: a decision answered 200 survives a crash of the server."""
        from pydantic import ValidationError

        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return refused(422, 'body is not valid JSON; send an object like {"reviewer": "ann", "action": "accept"}')
        try:
            body = DecisionRequest.model_validate(data)
        except ValidationError as err:
            return refused(422, _message(err.errors()))
        seen = body.version if "version" in body.model_fields_set else "current"

        def answer():
            decision, item, repeated = store.decide(
                item_id, body.action, body.reviewer, body.genres, seen, body.request_id
            )
            return {"decision": decision, "item": item, "repeated": repeated, "progress": store.progress()}

        return await run_in_threadpool(guarded, answer)

    @app.get("/review", include_in_schema=False)
    async def review_page():
        return FileResponse(WEB_FOLDER / "review.html")
