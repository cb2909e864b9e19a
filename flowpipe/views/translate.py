"""DuckDB SQL (rules, view columns, macro bodies) to Spark SQL with the same meaning, or a refusal.

sqlglot transpiles between the dialects, but where DuckDB and Spark disagree on meaning it still
emits something: `len()` becomes Spark's string length even for a list, `list_has_any` an
operator Spark does not have, `a[1]` an index that fails instead of giving NULL. So the
translation here accepts only constructs listed below, each checked against Spark by
tests/test_spark.py, rewrites the ones whose meaning differs (knowing the type of every column
of the views), and refuses anything else with `Untranslatable` naming the construct.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from flowpipe.common.text import first_line

try:  # the optional extra flowpipe[spark]
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.annotate_types import annotate_types
    from sqlglot.optimizer.qualify import qualify
    from sqlglot.schema import MappingSchema
except ImportError:  # pragma: no cover - reported by require()
    sqlglot = None

# view -> column -> DuckDB type (DESCRIBE of the views), as the rules see them
Schema = Mapping[str, Mapping[str, str]]


class Untranslatable(Exception):
    """SQL with a construct that has no faithful Spark translation; the message names it."""


def require() -> None:
    """Raise Untranslatable when sqlglot (flowpipe[spark]) is not installed."""
    if sqlglot is None:
        raise Untranslatable("sqlglot is not installed: pip install 'flowpipe[spark]'")


# Node kinds whose Spark rendering by sqlglot means what they mean in DuckDB.
_STRUCTURE = {
    "Select",
    "Union",
    "Intersect",
    "Except",
    "From",
    "Where",
    "Group",
    "Having",
    "Order",
    "Ordered",
    "Limit",
    "Offset",
    "Join",
    "With",
    "CTE",
    "Subquery",
    "Table",
    "TableAlias",
    "Alias",
    "Column",
    "Identifier",
    "Star",
    "Dot",
    "Paren",
    "Tuple",
    "Distinct",
    "Window",
    "Qualify",
    "Literal",
    "Boolean",
    "Null",
    "DataType",
    "Lambda",
    "Var",
    "Exists",
    "In",
    "Between",
    "Is",
    "Not",
    "And",
    "Or",
    "EQ",
    "NEQ",
    "GT",
    "GTE",
    "LT",
    "LTE",
    "NullSafeEQ",
    "NullSafeNEQ",
    "Like",
    "ILike",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "IntDiv",
    "Mod",
    "Neg",
    "Case",
    "If",
    "Filter",
    "Array",
    "DPipe",
    "Interval",
    "Bracket",
}
_FUNCTIONS = {
    # name in DuckDB's terms (for messages) is the sqlglot class; all checked in tests/test_spark.py
    "Coalesce",
    "Nullif",
    "Greatest",
    "Least",
    "Count",
    "Sum",
    "Avg",
    "Max",
    "Min",
    "CountIf",
    "LogicalAnd",
    "LogicalOr",
    "RowNumber",
    "Rank",
    "DenseRank",
    "Lag",
    "Lead",
    "Lower",
    "Upper",
    "Trim",
    "Substring",
    "StrPosition",
    "StartsWith",
    "EndsWith",
    "Length",
    "ArraySize",
    "RegexpLike",
    "RegexpExtract",
    "Replace",
    "Contains",
    "SplitPart",
    "ArrayContains",
    "ArrayFilter",
    "Transform",
    "ArrayOverlaps",
    "Abs",
    "Round",
    "Floor",
    "Ceil",
    "Extract",
    "TimestampTrunc",
    "Concat",
    "ArrayToString",
    "Cast",
    "TryCast",
}
_ALLOWED = _STRUCTURE | _FUNCTIONS
# DuckDB functions sqlglot does not know (exp.Anonymous) that flowpipe rewrites
_ANONYMOUS = {"list_has_all", "epoch_ns"}
_EXTRACT_PARTS = {"YEAR", "MONTH", "DAY", "HOUR", "MINUTE"}
_TRUNC_UNITS = {"YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND"}
_JOIN_KINDS = {"", "INNER", "OUTER", "CROSS", "SEMI", "ANTI"}
_CAST_TARGETS = {
    "VARCHAR",
    "TEXT",
    "BIGINT",
    "INT",
    "SMALLINT",
    "TINYINT",
    "DOUBLE",
    "FLOAT",
    "BOOLEAN",
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TIMESTAMP_NS",
    "TIMESTAMPTZ_NS",
}
_INTEGERS = {"BIGINT", "INT", "SMALLINT", "TINYINT", "UBIGINT", "UINT", "USMALLINT", "UTINYINT"}
_TIMES = {
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TIMESTAMP_NS",
    "TIMESTAMPTZ_NS",
    "TIMESTAMP_S",
    "TIMESTAMP_MS",
    "DATE",
}
_FIXED_FLOAT = {"DOUBLE", "FLOAT", "DECIMAL"}


def _name(node: exp.Expression) -> str:
    """How a DuckDB user would name the construct (sqlglot's own names differ: strftime is
    TIME_TO_STR to it)."""
    if isinstance(node, exp.Anonymous):
        return f"function {node.name.lower()}()"
    text = node.sql("duckdb")
    if isinstance(node, exp.Func):
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(", text)
        return f"function {(m.group(1) if m else node.sql_name()).lower()}()"
    return f"{type(node).__name__} ({text[:60]})"


@functools.lru_cache(maxsize=8)
def _mapping(key: tuple) -> MappingSchema:
    return MappingSchema({t: dict(cols) for t, cols in key}, dialect="duckdb")


def _schema_key(schema: Schema) -> tuple:
    return tuple(sorted((t, tuple(cols.items())) for t, cols in schema.items()))


def to_spark(sql: str, schema: Schema, *, functions: Mapping[str, int] | None = None) -> str:
    """Spark SQL for one DuckDB query over the tables of schema (view -> column -> DuckDB type);
    functions: the macros (name -> number of arguments) defined on Spark as SQL functions."""
    require()
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except SqlglotError as exc:
        raise Untranslatable(f"SQL that sqlglot cannot read: {first_line(exc)}") from None
    if len(trees) != 1 or not isinstance(trees[0], exp.Query):
        raise Untranslatable("not exactly one SELECT")
    tree = trees[0]
    _check(tree, functions or {})
    try:
        tree = qualify(
            tree,
            schema=_mapping(_schema_key(schema)),
            dialect="duckdb",
            quote_identifiers=False,
            validate_qualify_columns=False,
        )
        tree = annotate_types(tree, schema=_mapping(_schema_key(schema)), dialect="duckdb")
    except SqlglotError as exc:
        raise Untranslatable(f"SQL flowpipe cannot resolve: {first_line(exc)}") from None
    tree = _rewrite(tree)
    return _generate(tree)


def expression_to_spark(
    expr: str, columns: Mapping[str, str], *, functions: Mapping[str, int] | None = None
) -> str:
    """Spark SQL for one DuckDB expression over columns (name -> DuckDB type), e.g. a view
    column over the stored columns or a macro body over its parameters."""
    require()
    sql = to_spark(
        f"SELECT ({expr}) AS __fp_value FROM __fp_row", {"__fp_row": columns}, functions=functions
    )
    tree = sqlglot.parse_one(sql, read="spark")
    value = tree.expressions[0]
    text = _generate(value.this if isinstance(value, exp.Alias) else value)
    # unqualified again: a macro body names its parameters, a view column the stored columns
    return _ROW_QUALIFIER.sub("", text)


_ROW_QUALIFIER = re.compile(r"\b__fp_row\.")


def _generate(tree: exp.Expression) -> str:
    try:
        return tree.sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE, copy=False)
    except SqlglotError as exc:
        raise Untranslatable(f"no Spark form: {first_line(exc)}") from None


# ------------------------------------------------------------------ what is accepted


def _check(tree: exp.Expression, functions: Mapping[str, int]) -> None:
    for node in tree.walk():
        kind = type(node).__name__
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            if name in functions:
                if len(node.expressions) != functions[name]:
                    raise Untranslatable(
                        f"{name}() takes {functions[name]} arguments, not {len(node.expressions)}"
                    )
                continue
            if name not in _ANONYMOUS:
                raise Untranslatable(f"function {name}() (no Spark translation)")
            continue
        if kind not in _ALLOWED:
            raise Untranslatable(f"{_name(node)} (no Spark translation)")
        _check_node(node)


def _check_node(node: exp.Expression) -> None:
    """Forms of allowed kinds whose meaning still differs."""
    if isinstance(node, exp.Join):
        kind = " ".join(
            str(node.args.get(k) or "").upper() for k in ("method", "kind") if node.args.get(k)
        )
        if node.args.get("method") or (node.args.get("kind") or "").upper() not in _JOIN_KINDS:
            raise Untranslatable(f"{kind or 'this'} JOIN (no Spark translation)")
    elif isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            raise Untranslatable(f"table function {node.this.sql('duckdb')[:60]} in FROM")
    elif isinstance(node, exp.Union | exp.Intersect | exp.Except):
        if node.args.get("by_name"):
            raise Untranslatable("UNION BY NAME")
    elif isinstance(node, exp.Lambda):
        if len(node.expressions) != 1:
            raise Untranslatable("a lambda with an index parameter (lambda x, i: ...)")
    elif isinstance(node, exp.Bracket):
        if any(isinstance(e, exp.Slice) for e in node.expressions) or len(node.expressions) != 1:
            raise Untranslatable("a list slice (a[i:j])")
    elif isinstance(node, exp.Min | exp.Max):
        if node.args.get("count") is not None and _integer(node.args["count"]) is None:
            raise Untranslatable(f"{node.sql_name().lower()}(x, n) with a non-constant n")
    elif isinstance(node, exp.Extract):
        if node.this.name.upper() not in _EXTRACT_PARTS:
            raise Untranslatable(f"extract({node.this.name.lower()}) (Spark counts it differently)")
    elif isinstance(node, exp.TimestampTrunc):
        unit = node.args.get("unit")
        if unit is None or unit.name.upper() not in _TRUNC_UNITS:
            raise Untranslatable(f"date_trunc({unit.name if unit else '?'})")
    elif isinstance(node, exp.RegexpLike | exp.RegexpExtract | exp.RegexpReplace):
        if node.args.get("flag") or node.args.get("modifiers"):
            raise Untranslatable("regular expression options")
    elif isinstance(node, exp.Cast | exp.TryCast):
        to = node.to
        while to.this == exp.DataType.Type.ARRAY and len(to.expressions) == 1:
            to = to.expressions[0]  # a list of an allowed type
        if _type_name(to) not in _CAST_TARGETS or to.expressions:
            raise Untranslatable(f"CAST to {node.to.sql('duckdb')}")
    elif isinstance(node, exp.ArrayToString):
        if node.args.get("null") is not None:
            raise Untranslatable("array_to_string() with a NULL replacement")
    elif isinstance(node, exp.Window) and node.args.get("spec"):
        raise Untranslatable("a window frame (ROWS/RANGE BETWEEN ...)")


# ------------------------------------------------------------------ rewrites


def _type(node: exp.Expression) -> exp.DataType | None:
    t = getattr(node, "type", None)
    if t is None or t.this == exp.DataType.Type.UNKNOWN:
        return None
    return t


def _is_array(node: exp.Expression) -> bool | None:
    """True for a list, False for anything else, None when the type is not known."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.ArrayFilter | exp.Transform | exp.Array | exp.ArrayAgg):
        return True  # annotate_types leaves these untyped
    t = _type(node)
    return None if t is None else t.this == exp.DataType.Type.ARRAY


def _spark(template: str, **args: exp.Expression) -> exp.Expression:
    """A Spark expression from a template whose columns named like the keys are the given nodes."""
    tree = sqlglot.parse_one(template, read="spark")
    for col in list(tree.find_all(exp.Column)):
        if col.name in args and not col.table:
            col.replace(args[col.name].copy())
    return tree


def _nonnull(arr: exp.Expression) -> exp.Expression:
    return _spark("filter(__a, __fp_e -> __fp_e IS NOT NULL)", __a=arr)


def _rewrite(tree: exp.Expression) -> exp.Expression:
    """Bottom-up: each node is replaced after its children (types come from annotate_types)."""
    for node in reversed(list(tree.walk(bfs=False))):
        new = _rewrite_node(node)
        if new is not None and new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


def _rewrite_node(node: exp.Expression) -> exp.Expression | None:
    if isinstance(node, exp.Length):
        arr = _is_array(node.this)
        if arr is None:
            raise Untranslatable(
                f"len()/length() of {node.this.sql('duckdb')[:60]}: flowpipe cannot tell whether it "
                "is a list or a string (use array_length() for a list)"
            )
        return exp.ArraySize(this=node.this) if arr else None
    if isinstance(node, exp.ArraySize):
        return None
    if isinstance(node, exp.ArrayContains):
        # DuckDB skips NULL elements; Spark's array_contains is NULL when one is there
        return exp.Anonymous(
            this="array_contains", expressions=[_nonnull(node.this), node.expression]
        )
    if isinstance(node, exp.Contains):
        arr = _is_array(node.this)
        if arr is None:
            raise Untranslatable(
                f"contains() of {node.this.sql('duckdb')[:60]}: list or string unknown"
            )
        if arr:
            return exp.Anonymous(
                this="array_contains", expressions=[_nonnull(node.this), node.expression]
            )
        return None
    if isinstance(node, exp.ArrayOverlaps):
        return exp.Anonymous(
            this="arrays_overlap", expressions=[_nonnull(node.this), _nonnull(node.expression)]
        )
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name == "list_has_all":
            a, b = node.expressions
            return _spark("size(array_except(__b, __a)) = 0", __a=a, __b=_nonnull(b))
        if name == "epoch_ns":
            return _spark("(unix_micros(__t) * 1000)", __t=node.expressions[0])
        return None
    if isinstance(node, exp.Bracket):
        arr = _is_array(node.this)
        if not arr:
            raise Untranslatable(
                f"{node.sql('duckdb')[:60]}: an index into something flowpipe cannot tell is a list"
            )
        index = node.expressions[0]
        # DuckDB: 1-based, negative from the end, NULL when out of range; try_element_at too,
        # except that it refuses 0
        constant = _integer(index)
        if constant is not None:
            # sqlglot's parser shifts integer literal indexes to 0-based (DuckDB a[1] -> 0);
            # other index expressions are left as written
            if constant + 1 == 0:
                return exp.Null()
            return exp.Anonymous(
                this="try_element_at", expressions=[node.this, exp.Literal.number(constant + 1)]
            )
        return _spark(
            "(CASE WHEN __i = 0 THEN NULL ELSE try_element_at(__a, try_cast(__i AS INT)) END)",
            __a=node.this,
            __i=index,
        )
    if isinstance(node, exp.Min | exp.Max) and node.args.get("count") is not None:
        # DuckDB's min(x, k): the k smallest, ascending; Spark 4.2+ has min_by(x, x, k)
        fn = "min_by" if isinstance(node, exp.Min) else "max_by"
        return exp.Anonymous(this=fn, expressions=[node.this, node.this.copy(), node.args["count"]])
    if isinstance(node, exp.Concat):
        parts = [
            p if _is_string(p) else exp.Cast(this=p, to=exp.DataType.build("STRING"))
            for p in node.expressions
        ]
        # DuckDB's concat() skips NULLs (Spark's is NULL); || stays NULL in both
        return exp.Anonymous(this="concat_ws", expressions=[exp.Literal.string(""), *parts])
    if isinstance(node, exp.Cast | exp.TryCast):
        return _rewrite_cast(node)
    if isinstance(node, exp.CountIf):
        # DuckDB's count_if is NULL over no non-NULL input, Spark's is 0
        return _spark("sum(CAST(__x AS INT))", __x=node.this)
    return None


def _integer(node: exp.Expression) -> int | None:
    """The value of an integer literal (sqlglot parses -1 as a negation of 1)."""
    if isinstance(node, exp.Neg):
        inner = _integer(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal) and not node.is_string and re.fullmatch(r"\d+", node.name):
        return int(node.name)
    return None


def _is_string(node: exp.Expression) -> bool:
    t = _type(node)
    return t is not None and t.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT)


def _type_name(t: exp.DataType) -> str:
    """TIMESTAMPTZ, VARCHAR, ... (types sqlglot does not know, e.g. TIMESTAMPTZ_NS, by name)."""
    if t.this == exp.DataType.Type.USERDEFINED:
        return str(t.args.get("kind") or "").upper()
    return t.this.name


def _rewrite_cast(node: exp.Cast) -> exp.Expression | None:
    target = _type_name(node.to)
    source = _type(node.this)
    src = _type_name(source) if source is not None else None
    if target in _INTEGERS and src in _FIXED_FLOAT:
        raise Untranslatable(
            f"CAST of a fraction to {target}: DuckDB rounds, Spark truncates (use round() first)"
        )
    if target in ("VARCHAR", "TEXT") and src is not None and (src in _TIMES or src in _FIXED_FLOAT):
        raise Untranslatable(f"CAST of {src} to text: the engines format it differently")
    if target in ("VARCHAR", "TEXT") and source is not None and source.is_type("array", "struct"):
        raise Untranslatable("CAST of a list or struct to text")
    if target.startswith("TIMESTAMP") and isinstance(node.this, exp.Literal):
        # a time literal: normalised to UTC microseconds (Spark's precision)
        return _spark(f"TIMESTAMP '{_utc_literal(node.this.name)}'")
    if target.startswith("TIMESTAMP") and target != "TIMESTAMP":
        return exp.Cast(this=node.this, to=exp.DataType.build("TIMESTAMP"))
    return None


_TZ_TAIL = re.compile(r"([+-]\d{2})(?::?(\d{2}))?$")


def _utc_literal(text: str) -> str:
    """'2024-05-01 12:00:00.123456789+00' -> '2024-05-01 12:00:00.123456' (UTC, microseconds)."""
    value = text.strip().replace("T", " ")
    frac_ns = ""
    m = re.match(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", value)
    if not m:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise Untranslatable(f"time literal {text!r}") from None
    else:
        base, frac, tail = m.groups()
        frac_ns = (frac or ".")[1:]
        tail = tail.strip()
        if tail in ("", "Z", "UTC"):
            tail = "+00:00"
        tz = _TZ_TAIL.match(tail)
        if not tz:
            raise Untranslatable(f"time literal {text!r}")
        tail = f"{tz.group(1)}:{tz.group(2) or '00'}"
        try:
            dt = datetime.fromisoformat(f"{base}{tail}")
        except ValueError:
            raise Untranslatable(f"time literal {text!r}") from None
    if frac_ns[6:].strip("0"):  # truncating it would move the bound: refused, not guessed
        raise Untranslatable(f"time literal {text!r} finer than Spark's microseconds")
    micros = int((frac_ns + "000000")[:6]) if frac_ns else dt.microsecond
    dt = dt.replace(microsecond=micros)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def spark_type(duckdb_type: str) -> str:
    """Spark's name of a DuckDB type (for SQL function parameters)."""
    require()
    return exp.DataType.build(duckdb_type, dialect="duckdb").sql("spark")
