"""A Marketing API emulator for Custom Audience uploads: ``POST``/``DELETE /{version}/{audience_id}/users``.

It follows Meta's documented protocol: the access token (``Authorization: Bearer``/``OAuth`` header or an
``access_token`` parameter), ``payload`` (JSON ``{schema, data}``, at most 10,000 rows, every value but EXTERN_ID a
SHA-256 hex digest or blank) and ``session`` (``session_id``, ``batch_seq`` from 1 in order, ``last_batch_flag``
ending the session, ``estimated_num_total``). It answers ``{audience_id, session_id, num_received,
num_invalid_entries, invalid_entry_samples}`` and errors as the Graph API does (``{"error": {message, type, code,
error_subcode, fbtrace_id}}``). It keeps each audience's members (matched by EXTERN_ID, EMAIL or PHONE) and its
sessions: ``GET /{version}/{audience_id}`` gives ``approximate_count``, ``GET .../sessions`` the sessions.
``app.state.facebook`` is the :class:`FacebookState` tests read.

Faults (``SandboxOptions.faults``), counted per upload request: ``rate_limit_*`` answers code 80003 (custom audience
throttling) with an ``x-business-use-case-usage`` header saying when access returns; ``throttled`` (audience ids)
answers code 17 for those audiences; ``server_error_*`` a 500 (code 1, transient), ``outage_*`` a 503 (code 2);
``session_uses`` N makes the token expire after N requests (code 190, subcode 463).
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import Fault, SandboxOptions

DEFAULT_ACCESS_TOKEN = "EAAsandbox-system-user-token"  # noqa: S105  # the sandbox's well-known token
DEFAULT_AUDIENCE_ID = "23850000000000001"
DEFAULT_BUSINESS_ID = "1000000000000001"
MAX_ROWS = 10_000
SUPPORTED_FAULTS = (
    "rate_limit_every",
    "rate_limit_burst",
    "server_error_every",
    "server_error_burst",
    "server_error_status",
    "outage_after",
    "outage_requests",
    "throttled",
    "session_uses",
)
KNOWN_KEYS = frozenset(
    {"EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP", "MADID"}
    | {"COUNTRY", "LOOKALIKE_VALUE"}
)
UNHASHED = frozenset({"EXTERN_ID", "MADID", "LOOKALIKE_VALUE"})
IDENTITY_KEYS = ("EXTERN_ID", "EMAIL", "PHONE")


class GraphError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: int,
        *,
        subcode: int | None = None,
        kind: str = "OAuthException",
        transient: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.subcode = status, message, code, subcode
        self.kind, self.transient, self.headers = kind, transient, headers or {}

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"message": self.message, "type": self.kind, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.transient:
            error["is_transient"] = True
        error["fbtrace_id"] = secrets.token_urlsafe(8)
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


@dataclass
class UploadSessionRecord:
    """One upload session as the sandbox saw it."""

    session_id: int
    action: str
    batch_seqs: list[int] = field(default_factory=list)
    num_received: int = 0
    num_invalid_entries: int = 0
    estimated_num_total: int | None = None
    finished: bool = False


@dataclass
class Audience:
    """One Custom Audience's members: id -> row, with an index per identity key."""

    members: dict[int, dict[str, str]] = field(default_factory=dict)
    index: dict[tuple[str, str], int] = field(default_factory=dict)
    next_id: int = 1

    def find(self, row: dict[str, str]) -> int | None:
        for key in IDENTITY_KEYS:
            if row.get(key) and (key, row[key]) in self.index:
                return self.index[(key, row[key])]
        return None

    def add(self, row: dict[str, str]) -> None:
        member = self.find(row)
        if member is None:
            member, self.next_id = self.next_id, self.next_id + 1
            self.members[member] = {}
        self.members[member].update({key: value for key, value in row.items() if value})
        for key in IDENTITY_KEYS:
            if self.members[member].get(key):
                self.index[(key, self.members[member][key])] = member

    def remove(self, row: dict[str, str]) -> None:
        member = self.find(row)
        if member is None:
            return
        for key in IDENTITY_KEYS:
            value = self.members[member].get(key)
            if value:
                self.index.pop((key, value), None)
        del self.members[member]


@dataclass
class FacebookState:
    """The sandbox's audiences, sessions and request counts; ``throttle_minutes`` is what a throttled answer's usage
    header says to wait (Meta says whole minutes)."""

    options: SandboxOptions
    audiences: dict[str, Audience] = field(default_factory=dict)
    sessions: dict[tuple[str, int], UploadSessionRecord] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    upload_requests: int = 0
    throttle_minutes: float = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.options.faults.require_only("facebook", SUPPORTED_FAULTS)
        self.faults = self.options.faults
        # credentials {"keep_members": "false"}: validate and count only (benchmarks/activation.py's 1M members)
        self.keep_members = self.options.credentials.get("keep_members", "true") != "false"
        ids = self.options.credentials.get("audience_ids", self.options.credentials.get("audience_id", ""))
        for audience_id in [part for part in ids.split(",") if part] or [DEFAULT_AUDIENCE_ID]:
            self.audiences[audience_id] = Audience()

    @property
    def token(self) -> str:
        return self.options.credentials.get("access_token", DEFAULT_ACCESS_TOKEN)


async def _parameters(request: Request) -> dict[str, Any]:
    """Query parameters and the body's: form fields (JSON objects as text, as the SDK sends them) or a JSON object
    (objects as they are), as the Graph API reads both."""
    parameters: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if body:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                raise GraphError(400, "(#100) The request body is not valid JSON", 100) from None
            if not isinstance(parsed, dict):
                raise GraphError(400, "(#100) The request body must be a JSON object", 100)
            parameters.update(parsed)
        else:
            parameters.update(parse_qsl(body.decode(), keep_blank_values=True))
    return parameters


def _check_token(request: Request, parameters: dict[str, str], state: FacebookState) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    token = credential if scheme.lower() in ("bearer", "oauth") else parameters.get("access_token", "")
    if not token:
        raise GraphError(400, "An active access token must be used to query information about the current user.", 2500)
    if token != state.token:
        raise GraphError(400, "Invalid OAuth access token - Cannot parse access token", 190)


def _count_upload(state: FacebookState) -> int:
    """Counts an upload request; the token expires after ``session_uses`` of them."""
    with state.lock:
        state.upload_requests += 1
        count = state.upload_requests
    if state.faults.session_uses and count > state.faults.session_uses:
        raise GraphError(
            400,
            "Error validating access token: Session has expired on Monday, 30-Nov-26 08:00:00 PST.",
            190,
            subcode=463,
        )
    return count


def _audience(state: FacebookState, audience_id: str, method: str) -> Audience:
    audience = state.audiences.get(audience_id)
    if audience is None:
        raise GraphError(
            400,
            f"Unsupported {method.lower()} request. Object with ID '{audience_id}' does not exist, cannot be loaded "
            "due to missing permissions, or does not support this operation.",
            100,
            subcode=33,
            kind="GraphMethodException",
        )
    return audience


def _usage_header(state: FacebookState, call_count: int) -> dict[str, str]:
    usage = {
        DEFAULT_BUSINESS_ID: [
            {
                "type": "CUSTOM_AUDIENCE",
                "call_count": call_count,
                "total_cputime": 1,
                "total_time": 1,
                "estimated_time_to_regain_access": state.throttle_minutes,
            }
        ]
    }
    return {"x-business-use-case-usage": json.dumps(usage)}


def _inject_fault(state: FacebookState, audience_id: str, count: int) -> None:
    if state.faults.resource_fault([audience_id]) is Fault.THROTTLED:
        raise GraphError(
            400, "(#17) User request limit reached", 17, subcode=2446079, headers=_usage_header(state, 100)
        )
    fault = state.faults.counted_fault(count)
    if fault is Fault.RATE_LIMIT:
        raise GraphError(
            400,
            "There have been too many calls for this Custom Audience. Wait a bit and try again.",
            80003,
            subcode=2446079,
            headers=_usage_header(state, 100),
        )
    if fault is Fault.OUTAGE:
        raise GraphError(503, "Service temporarily unavailable", 2, transient=True)
    if fault is Fault.SERVER_ERROR:
        raise GraphError(state.faults.server_error_status or 500, "An unknown error occurred", 1, transient=True)


def _json_field(parameters: dict[str, Any], name: str, *, required: bool) -> Any:
    raw = parameters.get(name)
    if raw is None:
        if required:
            raise GraphError(400, f"(#100) The parameter {name} is required", 100)
        return None
    if not isinstance(raw, str):
        return raw  # a JSON body's object
    try:
        return json.loads(raw)
    except ValueError:
        raise GraphError(400, f"(#100) Param {name} must be a JSON object", 100) from None


def _schema(payload: dict[str, Any]) -> list[str]:
    schema = payload.get("schema")
    keys = [schema] if isinstance(schema, str) else schema
    if not isinstance(keys, list) or not keys or not all(isinstance(key, str) for key in keys):
        raise GraphError(400, "(#100) payload[schema] must be a key or a non-empty list of keys", 100)
    unknown = [key for key in keys if key not in KNOWN_KEYS]
    if unknown:
        raise GraphError(400, f"(#100) Invalid schema key '{unknown[0]}' in payload[schema]", 100, subcode=1870053)
    return keys


_HEX_DIGITS = "0123456789abcdef"


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and not value.strip(_HEX_DIGITS)


def _session(state: FacebookState, audience_id: str, action: str, raw: Any) -> tuple[UploadSessionRecord | None, bool]:
    """The upload session this request belongs to, and whether it repeats the last accepted batch."""
    if raw is None:
        return None, False
    if not isinstance(raw, dict) or not isinstance(raw.get("session_id"), int) or raw["session_id"] <= 0:
        raise GraphError(400, "(#100) session[session_id] must be a positive 64-bit integer", 100)
    batch_seq = raw.get("batch_seq")
    if not isinstance(batch_seq, int) or batch_seq < 1:
        raise GraphError(400, "(#100) session[batch_seq] must be an integer from 1", 100)
    if not isinstance(raw.get("last_batch_flag", False), bool):
        raise GraphError(400, "(#100) session[last_batch_flag] must be a boolean", 100)
    key = (audience_id, raw["session_id"])
    record = state.sessions.get(key)
    if record is None:
        record = UploadSessionRecord(raw["session_id"], action, estimated_num_total=raw.get("estimated_num_total"))
        state.sessions[key] = record
    if record.action != action:
        raise GraphError(400, "(#100) A session either adds or removes users, not both", 100, subcode=1870145)
    if record.finished:
        raise GraphError(400, "(#100) The upload session has already finished (last_batch_flag)", 100, subcode=1870147)
    expected = len(record.batch_seqs) + 1
    if record.batch_seqs and batch_seq == record.batch_seqs[-1]:
        return record, True  # the client did not see our answer and sent the batch again
    if batch_seq != expected:
        raise GraphError(
            400, f"(#100) session[batch_seq] {batch_seq} is out of order; expected {expected}", 100, subcode=1870146
        )
    return record, False


async def _users(request: Request) -> Response:
    state: FacebookState = request.app.state.facebook
    audience_id = request.path_params["audience_id"]
    action = "add" if request.method == "POST" else "remove"
    try:
        parameters = await _parameters(request)
        _check_token(request, parameters, state)
        count = _count_upload(state)
        audience = _audience(state, audience_id, request.method)
        _inject_fault(state, audience_id, count)
        payload = _json_field(parameters, "payload", required=True)
        if not isinstance(payload, dict):
            raise GraphError(400, "(#100) Param payload must be a JSON object", 100)
        schema = _schema(payload)
        data = payload.get("data")
        if not isinstance(data, list) or not data:
            raise GraphError(400, "(#100) payload[data] must be a non-empty list", 100)
        if len(data) > MAX_ROWS:
            raise GraphError(
                400, f"(#100) Too many users in one request: {len(data)}; at most {MAX_ROWS} per request", 100
            )
        width = len(schema)
        hashed = [index for index, key in enumerate(schema) if key not in UNHASHED]
        valid_rows: list[list[Any]] = []
        invalid = 0
        samples: dict[str, str] = {}
        for entry in data:
            values = [entry] if width == 1 and not isinstance(entry, list) else entry
            if not isinstance(values, list) or len(values) != width:
                raise GraphError(400, "(#100) Each row of payload[data] must have one value per schema key", 100)
            if any(values) and all(values[i] == "" or _is_sha256(str(values[i])) for i in hashed):
                valid_rows.append(values)
            else:
                invalid += 1
                if len(samples) < 10:
                    samples[str(len(samples))] = "values must be SHA-256 hex digests (EXTERN_ID excepted)"
        raw_session = _json_field(parameters, "session", required=False)
        with state.lock:
            session, repeated = _session(state, audience_id, action, raw_session)
            if not repeated and state.keep_members:
                update = audience.add if action == "add" else audience.remove
                for values in valid_rows:
                    update({key: str(value) for key, value in zip(schema, values, strict=True)})
            if not repeated and session is not None:
                session.batch_seqs.append(raw_session["batch_seq"])
                session.num_received += len(data)
                session.num_invalid_entries += invalid
                session.finished = bool(raw_session.get("last_batch_flag", False))
            state.requests.append(
                {
                    "action": action,
                    "audience_id": audience_id,
                    "rows": len(data),
                    "session": raw_session if session is not None else None,
                }
            )
        answer: dict[str, Any] = {
            "audience_id": audience_id,
            "num_received": len(data),
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }
        if session is not None:
            answer["session_id"] = session.session_id
        return JSONResponse(answer)
    except GraphError as error:
        return error.response()


async def _audience_info(request: Request) -> Response:
    state: FacebookState = request.app.state.facebook
    audience_id = request.path_params["audience_id"]
    try:
        _check_token(request, await _parameters(request), state)
        audience = _audience(state, audience_id, "GET")
    except GraphError as error:
        return error.response()
    return JSONResponse({"id": audience_id, "approximate_count": len(audience.members)})


async def _sessions(request: Request) -> Response:
    state: FacebookState = request.app.state.facebook
    audience_id = request.path_params["audience_id"]
    try:
        _check_token(request, await _parameters(request), state)
        _audience(state, audience_id, "GET")
    except GraphError as error:
        return error.response()
    data = [
        {
            "session_id": str(record.session_id),
            "num_received": str(record.num_received),
            "num_invalid_entries": str(record.num_invalid_entries),
            "stage": "finished" if record.finished else "uploading",
        }
        for (audience, _), record in state.sessions.items()
        if audience == audience_id
    ]
    return JSONResponse({"data": data})


def create_sandbox(options: SandboxOptions | None = None) -> Starlette:
    """The Custom Audiences sandbox as an ASGI app (``app.state.facebook`` is its :class:`FacebookState`)."""
    app = Starlette(
        routes=[
            Route("/{version:str}/{audience_id:str}/users", _users, methods=["POST", "DELETE"]),
            Route("/{version:str}/{audience_id:str}/sessions", _sessions, methods=["GET"]),
            Route("/{version:str}/{audience_id:str}", _audience_info, methods=["GET"]),
        ]
    )
    app.state.facebook = FacebookState(options or SandboxOptions())
    return app
