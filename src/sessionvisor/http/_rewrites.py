"""``POST /conversations/{cid}/regenerate`` and ``PATCH /conversations/{cid}/messages/{id}``.

Both answer 202 once the change is stored (the new turn runs on; follow it on
the event stream), with the id of the user message asked again. A message id
the conversation does not show is a 404 (``UnknownMessage``), as is another
owner's conversation; a running turn or a message that is not the user's is a
409.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import UnknownMessage
from ._bodies import EditBody, RegenerateBody, message_id_ok
from ._errors import HTTPError

if TYPE_CHECKING:
    from ._app import _Api

__all__ = ["rewrite_routes", "unknown_message"]


def unknown_message(exc: UnknownMessage) -> HTTPError:
    """The 404 of a message id the conversation does not show."""
    return HTTPError(404, "UnknownMessage", str(exc))


def rewrite_routes(api: _Api) -> list[Route]:
    """The two routes, over ``api``'s supervisor."""

    async def regenerate(request: Request) -> Response:
        cid, scope = await api._target(request)
        body = await api.body(request, RegenerateBody, optional=True)
        await api._require(cid, scope)
        try:
            asked = await api.supervisor.regenerate(cid, message_id=body.message_id, scope=scope)
        except UnknownMessage as exc:
            raise unknown_message(exc) from None
        return _accepted(cid, asked)

    async def edit(request: Request) -> Response:
        cid, scope = await api._target(request)
        message_id = str(request.path_params["message_id"])
        if not message_id_ok(message_id):
            raise HTTPError(
                400, "ValidationError", "message_id must be 1 to 128 characters, none a control one"
            )
        body = await api.body(request, EditBody)
        await api._require(cid, scope)
        try:
            asked = await api.supervisor.edit(cid, message_id, body.content, scope=scope)
        except UnknownMessage as exc:
            raise unknown_message(exc) from None
        return _accepted(cid, asked)

    return [
        Route("/conversations/{cid}/regenerate", api.wrap(regenerate), methods=["POST"]),
        Route("/conversations/{cid}/messages/{message_id}", api.wrap(edit), methods=["PATCH"]),
    ]


def _accepted(cid: str, asked: str) -> JSONResponse:
    return JSONResponse(
        {"conversation_id": cid, "message_id": asked, "status": "running"}, status_code=202
    )
