"""The sandbox's GraphQL layer: the Admin API schema subset (admin_schema.graphql) executed by graphql-core over a
SyntheticShop, with Shopify's connection arguments, search syntax and calculated query cost.

Documented behaviour followed here (https://shopify.dev/docs/api/usage/pagination-graphql, .../search-syntax,
https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits):
- connections need ``first`` or ``last`` (at most 250); cursors are opaque and keyed on the sort value and id;
- ``query:`` takes ``field:value`` terms with ``:<``, ``:<=``, ``:>``, ``:>=`` comparators, quoted values, ``AND``
  (implicit), ``OR`` and ``-``/``NOT`` negation; an unknown field is ignored with a warning in
  ``extensions.search``, as Shopify does;
- requested cost: scalars and enums 0, objects 1, connections 2 plus ``first``/``last`` times the cost of one node,
  mutations 10; the actual cost counts the nodes really returned.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    get_named_type,
    is_leaf_type,
    is_object_type,
    value_from_ast_untyped,
)

from taps.shopify.synthetic_store import Record, SyntheticShop, iso

SCHEMA_VERSION = "2026-01"
SCHEMA_PATH = Path(__file__).with_name("admin_schema.graphql")
MAX_PAGE_SIZE = 250
CONNECTION_COST = 2
OBJECT_COST = 1
MUTATION_COST = 10


# --- search syntax ---------------------------------------------------------------------------------------------

_TERM = re.compile(
    r"""(?P<neg>-)?(?P<field>[a-z_]+):\s*(?P<op><=|>=|<|>)?\s*(?P<value>'[^']*'|"[^"]*"|[^\s()]+)"""
    r"""|(?P<word>'[^']*'|"[^"]*"|[^\s()]+)""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SearchTerm:
    field: str  # "default" for a bare word
    op: str  # "=", "<", "<=", ">", ">="
    value: str
    negated: bool = False


@dataclass
class SearchQuery:
    """A parsed ``query:`` argument: OR-groups of AND-ed terms, plus warnings for terms Shopify would ignore."""

    groups: list[list[SearchTerm]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)


def parse_search(text: str, fields: Iterable[str]) -> SearchQuery:
    """Parse Shopify search syntax for a connection that supports ``fields`` (plus the bare-word default search)."""
    known = set(fields)
    query = SearchQuery(groups=[[]])
    negate_next = False
    for match in _TERM.finditer(text):
        word = match.group("word")
        if word is not None:
            upper = word.upper()
            if upper == "AND":
                continue
            if upper == "OR":
                query.groups.append([])
                continue
            if upper == "NOT":
                negate_next = True
                continue
            query.groups[-1].append(SearchTerm("default", "=", word.strip("'\""), negate_next))
            negate_next = False
            continue
        name = match.group("field").lower()
        if name not in known:
            query.warnings.append({"field": name, "message": "Invalid search field for this query."})
            continue
        value = match.group("value").strip("'\"")
        negated = bool(match.group("neg")) or negate_next
        query.groups[-1].append(SearchTerm(name, match.group("op") or "=", value, negated))
        negate_next = False
    query.groups = [group for group in query.groups if group] or [[]]
    return query


def _parse_time(value: str) -> tuple[str, str] | None:
    """A search time value as an inclusive ``[start, end)`` pair of ISO strings; a date covers its whole day."""
    if value.lower() == "now":
        now = iso(datetime.now(UTC))
        return now, now
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return iso(start), iso(start + timedelta(days=1))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso(moment), iso(moment)


def _compare(actual: Any, op: str, start: Any, end: Any) -> bool:
    if op == "=":
        return bool(start <= actual < end) if start != end else bool(actual == start)
    if op == ">":
        return bool(actual > start) if start == end else bool(actual >= end)
    if op == ">=":
        return bool(actual >= start)
    if op == "<":
        return bool(actual < start)
    return bool(actual <= start) if start == end else bool(actual < end)


@dataclass(frozen=True)
class Resource:
    """How one top-level connection filters and sorts its records."""

    records: Callable[[SyntheticShop], list[Record]]
    time_fields: dict[str, str]  # search field -> record field
    text_fields: dict[str, str]  # search field -> record field path (dotted); all of them for a bare word
    sort_keys: dict[str, str]  # sort key -> record field ("" = id)
    default_sort: str = "ID"

    def matches(self, record: Record, term: SearchTerm, warnings: list[dict[str, str]]) -> bool:
        if term.field == "id":
            try:
                wanted = int(term.value.rsplit("/", 1)[-1])
            except ValueError:
                warnings.append({"field": "id", "message": f"Invalid id value: {term.value}"})
                return True
            return _compare(int(record["legacyResourceId"]), term.op, wanted, wanted)
        if term.field in self.time_fields:
            bounds = _parse_time(term.value)
            if bounds is None:
                warnings.append({"field": term.field, "message": f"Invalid time value: {term.value}"})
                return True
            actual = record.get(self.time_fields[term.field])
            return actual is not None and _compare(actual, term.op, *bounds)
        paths = self.text_fields.values() if term.field == "default" else [self.text_fields[term.field]]
        text = term.value.lower().rstrip("*")
        return any(text in str(_dig(record, path) or "").lower() for path in paths)

    def search_fields(self) -> set[str]:
        return {"id", "default", *self.time_fields, *self.text_fields}

    def sort_value(self, record: Record, sort_key: str) -> Any:
        path = self.sort_keys.get(sort_key, "")
        return _dig(record, path) if path else int(record["legacyResourceId"])


def _dig(record: Record, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


RESOURCES: dict[str, Resource] = {
    "customers": Resource(
        records=lambda shop: shop.customers,
        time_fields={"updated_at": "updatedAt", "created_at": "createdAt", "customer_date": "createdAt"},
        text_fields={
            "email": "defaultEmailAddress.emailAddress",
            "first_name": "firstName",
            "last_name": "lastName",
            "state": "state",
            "country": "defaultAddress.countryCodeV2",
        },
        sort_keys={"UPDATED_AT": "updatedAt", "CREATED_AT": "createdAt", "NAME": "displayName"},
    ),
    "orders": Resource(
        records=lambda shop: shop.orders,
        time_fields={"updated_at": "updatedAt", "created_at": "createdAt", "processed_at": "processedAt"},
        text_fields={"name": "name", "email": "email", "financial_status": "displayFinancialStatus"},
        sort_keys={"UPDATED_AT": "updatedAt", "CREATED_AT": "createdAt", "PROCESSED_AT": "processedAt"},
        default_sort="PROCESSED_AT",
    ),
    "products": Resource(
        records=lambda shop: shop.products,
        time_fields={"updated_at": "updatedAt", "created_at": "createdAt", "published_at": "publishedAt"},
        text_fields={
            "title": "title",
            "vendor": "vendor",
            "product_type": "productType",
            "handle": "handle",
            "status": "status",
        },
        sort_keys={"UPDATED_AT": "updatedAt", "CREATED_AT": "createdAt", "TITLE": "title", "VENDOR": "vendor"},
    ),
    "inventoryItems": Resource(
        records=lambda shop: shop.inventory_items,
        time_fields={"updated_at": "updatedAt", "created_at": "createdAt"},
        text_fields={"sku": "sku"},
        sort_keys={},
    ),
    "draftOrders": Resource(
        records=lambda shop: shop.draft_orders,
        time_fields={"updated_at": "updatedAt", "created_at": "createdAt"},
        text_fields={"name": "name", "status": "status", "email": "email"},
        sort_keys={"UPDATED_AT": "updatedAt", "STATUS": "status", "NUMBER": ""},
    ),
}


# --- connections -----------------------------------------------------------------------------------------------


def encode_cursor(last_id: int, last_value: Any) -> str:
    return base64.b64encode(orjson.dumps({"last_id": last_id, "last_value": last_value})).decode()


def decode_cursor(cursor: str) -> tuple[int, Any]:
    try:
        payload = orjson.loads(base64.b64decode(cursor, validate=True))
        return int(payload["last_id"]), payload["last_value"]
    except (ValueError, KeyError, TypeError):
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor}") from None


def connection(
    keyed: list[tuple[tuple[Any, int], Record]],
    *,
    first: int | None = None,
    last: int | None = None,
    after: str | None = None,
    before: str | None = None,
    reverse: bool = False,
) -> Record:
    """A Relay connection over ``(key, record)`` pairs ordered by key = ``(sort value, id)``, as Shopify pages."""

    def order(item: tuple[tuple[Any, int], Record]) -> tuple[bool, Any, int]:
        (value, number), _ = item
        return (value is None, value if value is not None else 0, number)

    ordered = sorted(keyed, key=order, reverse=reverse)
    positions = [order(item) for item in ordered]

    def cursor_position(cursor: str) -> tuple[bool, Any, int]:
        last_id, last_value = decode_cursor(cursor)
        return (last_value is None, last_value if last_value is not None else 0, last_id)

    def beyond(position: tuple[bool, Any, int], cursor: tuple[bool, Any, int]) -> bool:
        try:
            return position < cursor if reverse else position > cursor
        except TypeError:
            raise GraphQLError("Invalid cursor for current pagination sort.") from None

    start, end = 0, len(ordered)
    if after:
        mark = cursor_position(after)
        start = next((i for i, p in enumerate(positions) if beyond(p, mark)), len(ordered))
    if before:
        mark = cursor_position(before)
        end = next((i for i, p in enumerate(positions) if not beyond(mark, p)), len(ordered))
    window = ordered[start:end]
    has_next = has_previous = False
    if first is not None:
        has_next = len(window) > first or end < len(ordered)
        window = window[:first]
        has_previous = start > 0
    if last is not None:
        has_previous = len(window) > last or start > 0
        window = window[-last:] if last else []
        has_next = has_next or end < len(ordered)
    edges = [{"cursor": encode_cursor(number, value), "node": record} for (value, number), record in window]
    return {
        "edges": edges,
        "nodes": [record for _, record in window],
        "pageInfo": {
            "hasNextPage": has_next,
            "hasPreviousPage": has_previous,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


def _nested(records: list[Record], info: GraphQLResolveInfo[Any], **args: Any) -> Record:
    """A connection over a record's own list (addresses, line items...), in their stored order."""
    return connection([((index, index), record) for index, record in enumerate(records)], **_page_args(args, info))


def _page_args(args: dict[str, Any], info: GraphQLResolveInfo[Any]) -> dict[str, Any]:
    """The connection arguments; a bulk operation reads every node, so it pages nothing (``first`` is ignored)."""
    reverse = {"reverse": bool(args.get("reverse"))}
    if getattr(info.context, "bulk", False):
        return reverse
    return {name: args.get(name) for name in ("first", "last", "after", "before")} | reverse


def _metafields(record: Record, info: GraphQLResolveInfo[Any], args: dict[str, Any]) -> Record:
    metafields = record.get("_metafields", [])
    if args.get("namespace"):
        metafields = [m for m in metafields if m["namespace"] == args["namespace"]]
    if args.get("keys"):
        metafields = [m for m in metafields if f"{m['namespace']}.{m['key']}" in set(args["keys"])]
    return _nested(metafields, info, **args)


# --- execution -------------------------------------------------------------------------------------------------


@dataclass
class ExecutionContext:
    """Per-request state the resolvers fill in: search warnings for ``extensions.search``; ``bulk`` while a bulk
    operation runs its query (connections then return every node)."""

    search: list[dict[str, Any]] = field(default_factory=list)
    bulk: bool = False


def _node_type(value: Any, _info: GraphQLResolveInfo[Any], _type: Any) -> str | None:
    """The object type of a ``Node``: the type in its global id (gid://shopify/Customer/1 is a Customer)."""
    gid = str(value.get("id", "")) if isinstance(value, dict) else ""
    return gid.removeprefix("gid://shopify/").split("/", 1)[0] or None


@cache
def admin_schema() -> GraphQLSchema:
    """The schema subset with resolvers for every connection field of every object type."""
    schema = build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
    nested = {"addressesV2": "_addresses", "lineItems": "_lineItems", "variants": "_variants"}
    for type_ in schema.type_map.values():
        if not is_object_type(type_) or type_.name in ("QueryRoot", "Mutation"):
            continue
        assert isinstance(type_, GraphQLObjectType)
        for name, field_def in type_.fields.items():
            if name == "metafields":
                field_def.resolve = lambda record, info, **args: _metafields(record, info, args)
            elif name in nested:
                key = nested[name]
                field_def.resolve = lambda record, info, _key=key, **args: _nested(record.get(_key, []), info, **args)
    node = schema.get_type("Node")
    node.resolve_type = _node_type  # type: ignore[union-attr]
    return schema


def top_level_resolver(shop: SyntheticShop, name: str) -> Callable[..., Record]:
    resource = RESOURCES[name]

    def resolve(info: GraphQLResolveInfo[Any], **args: Any) -> Record:
        records = resource.records(shop)
        text = args.get("query")
        if text:
            search = parse_search(text, resource.search_fields())
            warnings = search.warnings
            records = [
                r
                for r in records
                if any(
                    all(resource.matches(r, term, warnings) != term.negated for term in group)
                    for group in search.groups
                )
            ]
            if warnings:
                unique = [dict(pair) for pair in dict.fromkeys(tuple(w.items()) for w in warnings)]
                context: ExecutionContext = info.context
                context.search.append({"path": [info.path.key], "query": text, "warnings": unique})
        sort_key = args.get("sortKey") or resource.default_sort
        keyed = [((resource.sort_value(r, sort_key), int(r["legacyResourceId"])), r) for r in records]
        return connection(keyed, **_page_args(args, info))

    return resolve


# --- calculated query cost -------------------------------------------------------------------------------------


class QueryCostError(Exception):
    """A query Shopify rejects before running it (missing or oversized ``first``/``last``)."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__("; ".join(error.message for error in errors))
        self.errors = errors


@dataclass
class CostCalculator:
    """Shopify's calculated query cost of one operation, before (requested) and after (actual) execution."""

    schema: GraphQLSchema
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]
    errors: list[GraphQLError] = field(default_factory=list)

    def _fields(self, selection_set: SelectionSetNode | None, parent: Any) -> Iterable[tuple[FieldNode, Any]]:
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                yield selection, parent
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                yield from self._fields(selection.selection_set, target)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments[selection.name.value]
                yield from self._fields(
                    fragment.selection_set, self.schema.get_type(fragment.type_condition.name.value)
                )

    def _argument(self, node: FieldNode, name: str) -> Any:
        for argument in node.arguments or ():
            if argument.name.value == name:
                return value_from_ast_untyped(argument.value, self.variables)
        return None

    def _page_size(self, node: FieldNode) -> int:
        first, last = self._argument(node, "first"), self._argument(node, "last")
        if first is None and last is None:
            self.errors.append(GraphQLError("you must provide one of first or last", node))
            return 0
        size = int(first if first is not None else last)
        if size > MAX_PAGE_SIZE or size < 0:
            argument = "first" if first is not None else "last"
            self.errors.append(GraphQLError(f"The value of '{argument}' must be between 0 and {MAX_PAGE_SIZE}.", node))
        return max(0, size)

    def _node_selections(self, node: FieldNode, connection_type: Any) -> list[tuple[SelectionSetNode | None, Any]]:
        node_type = get_named_type(connection_type.fields["nodes"].type)
        found = []
        for child, _ in self._fields(node.selection_set, connection_type):
            if child.name.value == "nodes":
                found.append((child.selection_set, node_type))
            elif child.name.value == "edges":
                found += [
                    (grand.selection_set, node_type)
                    for grand, _ in self._fields(child.selection_set, None)
                    if grand.name.value == "node"
                ]
        return found

    def requested(self) -> int:
        """The requested cost; argument problems are collected in ``errors``."""
        if self.operation.operation == OperationType.MUTATION:
            return MUTATION_COST * len(self.operation.selection_set.selections)
        root = self.schema.query_type
        return self._requested(self.operation.selection_set, root)

    def _requested(self, selection_set: SelectionSetNode | None, parent: Any) -> int:
        total = 0
        for node, owner in self._fields(selection_set, parent):
            name = node.name.value
            if name.startswith("__") or owner is None:
                continue
            field_type = get_named_type(owner.fields[name].type)
            if is_leaf_type(field_type):
                continue
            if field_type.name.endswith("Connection"):
                size = self._page_size(node)
                per_node = sum(
                    OBJECT_COST + self._requested(sub, node_type)
                    for sub, node_type in self._node_selections(node, field_type)
                )
                total += CONNECTION_COST + size * per_node
            else:
                total += OBJECT_COST + self._requested(node.selection_set, field_type)
        return total

    def actual(self, data: Any) -> int:
        """The cost of what was really returned: connections count the nodes they hold."""
        if self.operation.operation == OperationType.MUTATION:
            return MUTATION_COST * len(self.operation.selection_set.selections)
        return self._actual(self.operation.selection_set, self.schema.query_type, data)

    def _actual(self, selection_set: SelectionSetNode | None, parent: Any, data: Any) -> int:
        if not isinstance(data, dict):
            return 0
        total = 0
        for node, owner in self._fields(selection_set, parent):
            name = node.name.value
            if name.startswith("__") or owner is None:
                continue
            field_type = get_named_type(owner.fields[name].type)
            if is_leaf_type(field_type):
                continue
            value = data.get(node.alias.value if node.alias else name)
            if field_type.name.endswith("Connection"):
                total += CONNECTION_COST
                for sub, node_type in self._node_selections(node, field_type):
                    for item in self._returned_nodes(node, value):
                        total += OBJECT_COST + self._actual(sub, node_type, item)
            elif isinstance(value, list):
                total += OBJECT_COST + sum(self._actual(node.selection_set, field_type, v) for v in value[:1])
            else:
                total += OBJECT_COST + self._actual(node.selection_set, field_type, value)
        return total

    def _returned_nodes(self, node: FieldNode, value: Any) -> list[Any]:
        if not isinstance(value, dict):
            return []
        for child, _ in self._fields(node.selection_set, None):
            key = child.alias.value if child.alias else child.name.value
            if child.name.value == "nodes" and isinstance(value.get(key), list):
                return list(value[key])
            if child.name.value == "edges" and isinstance(value.get(key), list):
                return [edge.get("node") for edge in value[key] if isinstance(edge, dict)]
        return []


# --- bulk operations -------------------------------------------------------------------------------------------

MAX_BULK_CONNECTIONS = 5
MAX_BULK_NESTING = 2


def bulk_query_problems(schema: GraphQLSchema, document: DocumentNode) -> list[str]:
    """Why Shopify would refuse ``document`` as a bulk query, if it would (the bulk operations guide's rules): one
    query operation, whose single top-level field is a connection (not ``node``/``nodes``); at most five connections,
    nested at most two deep; every node holding a nested connection selects its ``id`` (children point to it)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or operations[0].operation != OperationType.QUERY:
        return ["Bulk queries must contain exactly one query operation (no mutations or subscriptions)."]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    calculator = CostCalculator(schema, operations[0], fragments, {})
    roots = list(calculator._fields(operations[0].selection_set, schema.query_type))
    if len(roots) != 1:
        return ["Bulk queries must select exactly one top-level field."]
    root, owner = roots[0]
    root_type = get_named_type(owner.fields[root.name.value].type) if root.name.value in owner.fields else None
    if root.name.value in ("node", "nodes") or root_type is None or not root_type.name.endswith("Connection"):
        return ["Bulk queries require a connection field at the top level (the node and nodes fields can't be used)."]
    problems: list[str] = []
    connections = 0

    def walk(node: FieldNode, connection_type: Any, depth: int) -> None:
        nonlocal connections
        connections += 1
        if depth > MAX_BULK_NESTING:
            problems.append(f"Bulk queries cannot contain connections nested more than {MAX_BULK_NESTING} levels.")
        for selection_set, node_type in calculator._node_selections(node, connection_type):
            fields = list(calculator._fields(selection_set, node_type))
            nested = [
                (child, get_named_type(parent.fields[child.name.value].type))
                for child, parent in fields
                if parent is not None and child.name.value in parent.fields
            ]
            nested = [(child, type_) for child, type_ in nested if type_.name.endswith("Connection")]
            if nested and not any(child.name.value == "id" for child, _ in fields):
                problems.append(f"The parent of the nested connection '{nested[0][0].name.value}' must select id.")
            for child, type_ in nested:
                walk(child, type_, depth + 1)

    walk(root, root_type, 1)
    if connections > MAX_BULK_CONNECTIONS:
        problems.append(f"Bulk queries cannot contain more than {MAX_BULK_CONNECTIONS} connections.")
    return problems


def _connection_nodes(value: Record) -> list[Record]:
    if isinstance(value.get("nodes"), list):
        return list(value["nodes"])
    return [edge["node"] for edge in value.get("edges") or [] if isinstance(edge, dict)]


def bulk_jsonl(root_connection: Record) -> tuple[bytes, int, int]:
    """A bulk query's result as Shopify writes it: one JSON line per node, nested connections left out of their
    parent's line and each of their nodes on a line of its own after it, with ``__parentId`` (the parent's id).
    Returns the JSONL, the count of all objects and of root objects."""
    lines: list[bytes] = []

    def emit(node: Record, parent_id: str | None) -> None:
        own = {key: value for key, value in node.items() if not _is_connection(value)}
        if parent_id is not None:
            own["__parentId"] = parent_id
        lines.append(orjson.dumps(own))
        for value in node.values():
            if _is_connection(value):
                for child in _connection_nodes(value):
                    emit(child, str(node["id"]))

    roots = _connection_nodes(root_connection)
    for root in roots:
        emit(root, None)
    return b"".join(line + b"\n" for line in lines), len(lines), len(roots)


def _is_connection(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and ("edges" in value or "nodes" in value)
        and set(value)
        <= {
            "edges",
            "nodes",
            "pageInfo",
        }
    )
