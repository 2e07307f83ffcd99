"""What an SQL statement does: read, write, or only control its own session.

One classifier for every guard (replica writes, writes outside a transaction),
for read-your-writes, for failover and for two-phase commit. It runs on every
statement through execute wrappers, so it is a lexer and a few token rules, not
a parser, with fast paths for what Django sends most, and its answers are cached
on the SQL string.

It knows no engine. Where PostgreSQL, SQLite and MariaDB/MySQL split the same
text differently (nested comments, ``$tag$`` quotes, ``#`` and ``--x``,
backslashes in strings, ``/*! ... */`` whose content MySQL runs) it reads the
text each way and keeps the answer that writes. Anything it does not recognise
is a write: a write taken for a read can lose data (on a replica that mirrors its
primary, or run twice by failover); a read taken for a write only costs a replica.

Decisions:

- Row locks (``SELECT ... FOR UPDATE/SHARE``, ``LOCK IN SHARE MODE``), ``LOCK``
  and sequences (``nextval``, ``setval``, ``NEXT VALUE FOR``) write: they belong
  on the primary, where Django also sends ``select_for_update()``.
- ``SELECT ... INTO`` writes (a table in PostgreSQL, a file or a variable in MySQL).
- ``EXPLAIN`` reads, unless it runs the statement (``ANALYZE``) and that writes.
- ``COPY ... TO STDOUT`` reads; ``COPY ... FROM``, and ``TO`` a file or a program, write.
- ``CALL``, ``DO``, ``LOAD``, DDL and maintenance (``VACUUM``, ``ANALYZE`` of
  tables, ``REINDEX``) write: PostgreSQL runs some in read-only transactions, but
  a standby refuses them, and the primary is where they belong.
- SQLite: ``PRAGMA name`` and introspection such as ``PRAGMA table_info(t)`` read;
  a ``PRAGMA`` given a value writes (some change the file, some the connection, and
  no list of which stays right across SQLite versions).
- Transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``,
  ``RELEASE``, ``XA``, ``PREPARE TRANSACTION``, ``COMMIT PREPARED``) and session
  state (``SET``, ``RESET``, ``USE``, cursors, ``UNLOCK TABLES``, ``KILL``) are
  `Kind.CONTROL`: they change no data themselves (each statement inside the
  transaction is classified on its own), so they pin no reads, make no two-phase
  participant a writer, and pass a replica's guard; but they belong to their
  connection, so failover never runs them elsewhere. What changes the server is a
  write: ``SET GLOBAL``/``PERSIST``, ``SET PASSWORD``, ``RESET MASTER``, ``START SLAVE``.
- Several statements in one string (``SELECT 1; DELETE FROM t``): the one that does
  most decides. A string of only comments and blanks runs nothing: a read.
- A function called by a query is not seen (``SELECT my_function_that_writes()``);
  two-phase commit asks the server whether a participant wrote.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable

__all__ = ["Kind", "classify", "is_read", "is_write"]


class Kind(enum.Enum):
    """What a statement does, for routing."""

    #: Changes nothing: any server of the group may answer it, again if need be.
    READ = "read"
    #: Changes transaction or session state only: writes nothing, but stays on its connection.
    CONTROL = "control"
    #: May change data, schema or server state, or takes locks: the primary's.
    WRITE = "write"


_RANK = {Kind.READ: 0, Kind.CONTROL: 1, Kind.WRITE: 2}


def is_write(sql: str) -> bool:
    """Whether ``sql`` may write (data, schema, server state or row locks): primary only."""
    return classify(sql) is Kind.WRITE


def is_read(sql: str) -> bool:
    """Whether ``sql`` only reads, so that any server of its group may run it (again)."""
    return classify(sql) is Kind.READ


def classify(sql: str) -> Kind:
    """The `Kind` of ``sql``, which may hold several statements; unknown means `Kind.WRITE`."""
    if isinstance(sql, bytes | bytearray):
        sql = bytes(sql).decode("utf-8", "replace")
    elif not isinstance(sql, str):
        # psycopg's sql.Composed and the like reach execute wrappers too; their
        # text is not known here, so they go the safe way.
        return Kind.WRITE
    return _classify(sql)


@functools.lru_cache(maxsize=4096)
def _classify(sql: str) -> Kind:
    if _PLAIN_WRITE.match(sql):
        return Kind.WRITE
    upper = sql.upper()
    if _PLAIN_SELECT.match(upper) and not any(clue in upper for clue in _SELECT_CLUES):
        return Kind.READ
    if _PLAIN_SAVEPOINT.match(upper):
        return Kind.CONTROL
    kind = _classify_tokens(_postgresql_tokens(sql, upper))
    for clues, lexer in _OTHER_READINGS:
        if kind is not Kind.WRITE and any(clue in upper for clue in clues):
            kind = max(kind, _classify_tokens(lexer(upper), flat=True), key=_RANK.__getitem__)
    return kind


# --- Fast paths: what Django sends most, decided without reading every token ---------------

#: A statement that starts with one of these writes, whatever follows.
_PLAIN_WRITE = re.compile(
    r"\s*(?:INSERT|UPDATE|DELETE|REPLACE|MERGE|CREATE|ALTER|DROP|TRUNCATE)\b", re.IGNORECASE
)
_PLAIN_SELECT = re.compile(r"\s*SELECT\b")
#: Without any of these, a statement that starts with SELECT is one plain read on
#: every engine: no second statement, no comment to hide one, no lock, INTO or
#: sequence. (Substrings, not words: a column named "format" takes the long way.)
_SELECT_CLUES = (";", "--", "/*", "*/", "#", "INTO", "FOR", "LOCK", "NEXT", "SETVAL")
#: Django's savepoints, with nothing else in the string.
_PLAIN_SAVEPOINT = re.compile(
    r'\s*(?:SAVEPOINT|RELEASE\s+SAVEPOINT|ROLLBACK\s+TO\s+SAVEPOINT)\s+(?:"\w+"|`\w+`|\w+)\s*\Z'
)


# --- Lexers: words in capitals and punctuation; comments dropped ----------------------------
#
# Three readings of one text: PostgreSQL's (nested comments, $tag$ quotes, E''
# escapes), SQLite's (flat comments) and MariaDB/MySQL's (flat comments, # and
# "-- " comments, backslash escapes, /*! ... */ whose content runs). The first
# always; the others where the text holds something they read differently.
#
# Quoted strings and names stay whole tokens, quotes included, so that they
# never equal a keyword: 'delete' and "update" spell nothing. Whitespace and the
# operators no rule looks at match no alternative: findall() and search() skip them.

_POSTGRESQL_TOKEN = re.compile(
    r"""
    [Ee]'(?:[^'\\]|\\.|'')*'            # a string with backslash escapes
  | \w[\w$]*                            # a word
  | [(),;=.@]
  | "[^"]*(?:""[^"]*)*"                 # a quoted name
  | '[^']*(?:''[^']*)*'                 # a string
  | `[^`]*(?:``[^`]*)*`
  | --[^\n]*
  | /\*.*?\*/                           # a comment, unless nested
  | \$(?:[^\W\d]\w*)?\$                 # opens a dollar-quoted string
  | ['"`]|/\*                           # opens what never closes
    """,
    re.VERBOSE | re.DOTALL,
)
_SQLITE_TOKEN = re.compile(
    r"""
    \w[\w$]*
  | [(),;=.@]
  | "[^"]*(?:""[^"]*)*"
  | '[^']*(?:''[^']*)*'
  | `[^`]*(?:``[^`]*)*`
  | --[^\n]*
  | /\*.*?\*/
  | \*/(?!\*)                           # closes no comment: the statement is refused
  | ['"`]|/\*
    """,
    re.VERBOSE | re.DOTALL,
)
_MYSQL_TOKEN = re.compile(
    r"""
    \w[\w$]*
  | [(),;=.@]
  | '(?:[^'\\]|\\.|'')*'
  | "(?:[^"\\]|\\.|"")*"
  | `[^`]*(?:``[^`]*)*`
  | (?:--(?=\s|\Z)|\#)[^\n]*
  | /\*.*?\*/
  | \*/(?!\*)
  | ['"`]|/\*
    """,
    re.VERBOSE | re.DOTALL,
)
#: MariaDB/MySQL run what is inside ``/*! ... */`` and ``/*M! ... */``.
_EXECUTABLE_COMMENT = re.compile(r"/\*M?!\d*(.*?)\*/", re.DOTALL)
#: Tokens that open a string, a name or a comment that the text never closes.
_UNCLOSED = frozenset({"'", '"', "`", "/*"})
_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_NESTED_COMMENT = re.compile(r"/\*|\*/")
#: The mark a flat reading leaves where a statement closes a comment it never opened.
_STRAY_CLOSE = "*/"


def _postgresql_tokens(sql: str, upper: str) -> list[str] | None:
    """PostgreSQL's tokens, or None when the text ends inside a string or comment."""
    found = _POSTGRESQL_TOKEN.findall(upper)
    if ("$" in upper and _DOLLAR_QUOTE.search(upper)) or (
        "/*" in upper and any("/*" in token[2:] for token in found if token[0] == "/")
    ):
        return _scanned_tokens(sql)
    if not _UNCLOSED.isdisjoint(found):
        return None
    return [token for token in found if token[0] not in "-/"]


def _scanned_tokens(sql: str) -> list[str] | None:
    """`_postgresql_tokens` one by one, past nested comments and dollar-quoted strings.

    On the text as written: dollar quotes' tags are case-sensitive.
    """
    tokens: list[str] = []
    position = 0
    while match := _POSTGRESQL_TOKEN.search(sql, position):
        token, position = match.group(), match.end()
        if token in _UNCLOSED:
            return None
        if token.startswith("/*"):
            depth = 1
            for mark in _NESTED_COMMENT.finditer(sql, match.start() + 2):
                depth += 1 if mark.group() == "/*" else -1
                if depth == 0:
                    position = mark.end()
                    break
            else:
                return None
        elif token[0] == "$":
            close = sql.find(token, position)
            if close < 0:
                return None
            position = close + len(token)
            tokens.append("$$")
        elif token[0] != "-":
            tokens.append(token.upper())
    return tokens


def _sqlite_tokens(upper: str) -> list[str] | None:
    """SQLite's tokens, or None when the text ends inside a string or comment."""
    found = _SQLITE_TOKEN.findall(upper)
    if not _UNCLOSED.isdisjoint(found):
        return None
    return [token for token in found if token[0] not in "-/"]


def _mysql_tokens(upper: str) -> list[str] | None:
    """MariaDB/MySQL's tokens, or None when the text ends inside a string or comment."""
    if "/*!" in upper or "/*M!" in upper:
        # The marks hold no quote, so taking them out moves no string's bounds.
        upper = _EXECUTABLE_COMMENT.sub(r" \1 ", upper)
    found = _MYSQL_TOKEN.findall(upper)
    if not _UNCLOSED.isdisjoint(found):
        return None
    return [token for token in found if token[0] not in "-#/"]


#: The other readings, and what in a text can make them differ from PostgreSQL's.
_OTHER_READINGS: tuple[tuple[tuple[str, ...], Callable[[str], list[str] | None]], ...] = (
    (("/*", "*/", "$", "E'"), _sqlite_tokens),
    (("/*", "*/", "$", "#", "\\", "--"), _mysql_tokens),
)


# --- Rules over tokens ------------------------------------------------------------------------

#: First words of statements that change no data and belong to their session.
_CONTROL = frozenset(
    {
        "BEGIN", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "XA",
        "DISCARD", "USE", "DEALLOCATE", "FETCH", "MOVE", "CLOSE", "UNLOCK", "KILL",
    }
)  # fmt: skip
#: ``RESET`` these and the server changes (binary logs, replication, persisted settings).
_RESET_WRITES = frozenset({"MASTER", "SLAVE", "REPLICA", "BINARY", "PERSIST"})
#: After ``SET`` (or a comma in it), these scope a setting to the whole server.
_SERVER_SCOPES = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})
#: SQLite pragmas that take an argument and still only read.
_PRAGMA_QUERIES = frozenset(
    {
        "TABLE_INFO", "TABLE_XINFO", "TABLE_LIST", "INDEX_INFO", "INDEX_XINFO", "INDEX_LIST",
        "FOREIGN_KEY_LIST", "FOREIGN_KEY_CHECK", "INTEGRITY_CHECK", "QUICK_CHECK",
    }
)  # fmt: skip
#: SQLite pragmas that act when named alone.
_PRAGMA_ACTIONS = frozenset({"OPTIMIZE", "INCREMENTAL_VACUUM", "WAL_CHECKPOINT"})
#: The first words a statement run by ``EXPLAIN ANALYZE`` / MariaDB's ``ANALYZE`` can have.
_STATEMENTS = frozenset(
    {"SELECT", "WITH", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "("}
)
_FALSE = frozenset({"FALSE", "OFF", "0"})
#: In a query, these words write when the next token is one of theirs (any, if none).
_WRITES_WHEN_FOLLOWED: dict[str, frozenset[str]] = {
    "INTO": frozenset(),  # SELECT ... INTO a table, a file or a variable
    "FOR": frozenset({"UPDATE", "SHARE", "NO", "KEY"}),  # row locks
    "LOCK": frozenset({"IN"}),  # LOCK IN SHARE MODE
    "NEXTVAL": frozenset({"("}),
    "SETVAL": frozenset({"("}),
    "NEXT": frozenset({"VALUE"}),  # NEXT VALUE FOR sequence
    # A data-modifying WITH query; INSERT and MERGE have an INTO.
    "(": frozenset({"DELETE", "UPDATE"}),
}


def _classify_tokens(tokens: list[str] | None, flat: bool = False) -> Kind:
    """The `Kind` of the statements in ``tokens``; None (text that never closes) writes.

    In a ``flat`` reading (comments do not nest), a statement with a stray ``*/``
    is refused by the engine, so it runs nothing.
    """
    if tokens is None:
        return Kind.WRITE
    if ";" not in tokens and not flat:
        return _statement(tokens) if tokens else Kind.READ
    kind = Kind.READ
    start = 0
    # Statements end at every semicolon, even one inside a compound statement:
    # each piece then starts with a word that is known or writes.
    for index, token in enumerate([*tokens, ";"]):
        if token == ";":
            statement = tokens[start:index]
            start = index + 1
            if not statement or (flat and _STRAY_CLOSE in statement):
                continue
            kind = max(kind, _statement(statement), key=_RANK.__getitem__)
            if kind is Kind.WRITE:
                return kind
    return kind


def _statement(tokens: list[str]) -> Kind:
    """The `Kind` of one statement; an unknown first word writes."""
    if not tokens:
        return Kind.WRITE
    rule = _RULES.get(tokens[0])
    if rule is not None:
        return rule(tokens)
    if tokens[0] in _CONTROL:
        return Kind.CONTROL
    return Kind.WRITE


def _query(tokens: list[str]) -> Kind:
    """``SELECT``, ``VALUES``, ``TABLE`` (or in parentheses): a read unless it locks or stores."""
    first = next((token for token in tokens if token != "("), None)
    if first == "WITH":
        return _with(tokens[tokens.index("WITH") :])
    if first not in {"SELECT", "VALUES", "TABLE"}:
        return Kind.WRITE
    return _reads_only(tokens)


def _reads_only(tokens: list[str]) -> Kind:
    """Whether a query writes anywhere in it: INTO, a row lock, a sequence, a DML subquery."""
    for word, after in _WRITES_WHEN_FOLLOWED.items():
        if word not in tokens:
            continue
        if not after:
            return Kind.WRITE
        if after.isdisjoint(tokens):
            continue
        for index, token in enumerate(tokens[:-1]):
            if token == word and tokens[index + 1] in after:
                return Kind.WRITE
    return Kind.READ


def _after_group(tokens: list[str], index: int) -> int:
    """The index after the parenthesis that closes the one at ``index``, or -1."""
    depth = 0
    for position in range(index, len(tokens)):
        if tokens[position] == "(":
            depth += 1
        elif tokens[position] == ")":
            depth -= 1
            if depth == 0:
                return position + 1
    return -1


def _with(tokens: list[str]) -> Kind:
    """``WITH [RECURSIVE] name [(columns)] AS [[NOT] MATERIALIZED] (query) [, ...] statement``."""
    index = 2 if tokens[1:2] == ["RECURSIVE"] else 1
    while True:
        index += 1  # the name
        if tokens[index : index + 1] == ["("]:
            index = _after_group(tokens, index)
        if index < 0 or tokens[index : index + 1] != ["AS"]:
            return Kind.WRITE
        index += 1
        index += tokens[index : index + 1] == ["NOT"]
        index += tokens[index : index + 1] == ["MATERIALIZED"]
        if tokens[index : index + 1] != ["("]:
            return Kind.WRITE
        index = _after_group(tokens, index)
        if index < 0:
            return Kind.WRITE
        # PostgreSQL's SEARCH ... SET column and CYCLE ... USING column.
        for clause, last in (("SEARCH", "SET"), ("CYCLE", "USING")):
            if tokens[index : index + 1] == [clause]:
                try:
                    index = tokens.index(last, index) + 2
                except ValueError:
                    return Kind.WRITE
        if tokens[index : index + 1] != [","]:
            break
        index += 1
    if _reads_only(tokens[:index]) is Kind.WRITE:
        return Kind.WRITE
    return _statement(tokens[index:])


def _explain(tokens: list[str]) -> Kind:
    """``EXPLAIN`` runs nothing, unless with ``ANALYZE``: then it is what it runs."""
    analyze = False
    index = 1
    if tokens[1:2] == ["("]:
        end = _after_group(tokens, 1)
        if end < 0:
            return Kind.WRITE
        for position in range(2, end - 1):
            if tokens[position] in {"ANALYZE", "ANALYSE"}:
                analyze = analyze or tokens[position + 1] not in _FALSE
        index = end
    while index < len(tokens) and tokens[index] in {
        "ANALYZE", "ANALYSE", "VERBOSE", "EXTENDED", "PARTITIONS", "QUERY", "PLAN", "FORMAT",
    }:  # fmt: skip
        analyze = analyze or tokens[index] in {"ANALYZE", "ANALYSE"}
        if tokens[index] == "FORMAT":
            index += 1 + (tokens[index + 1 : index + 2] == ["="])
        index += 1
    if not analyze:
        return Kind.READ
    return Kind.READ if _statement(tokens[index:]) is Kind.READ else Kind.WRITE


def _analyze(tokens: list[str]) -> Kind:
    """``ANALYZE t`` writes statistics; MariaDB's ``ANALYZE SELECT`` runs the statement."""
    index = 1
    if tokens[1:2] == ["FORMAT"]:
        index = 3 + (tokens[2:3] == ["="])
    if tokens[index : index + 1] and tokens[index] in _STATEMENTS:
        return Kind.READ if _statement(tokens[index:]) is Kind.READ else Kind.WRITE
    return Kind.WRITE


def _pragma(tokens: list[str]) -> Kind:
    """SQLite: ``PRAGMA [schema.]name`` reads, and so do introspection pragmas with arguments."""
    index = 3 if tokens[2:3] == ["."] else 1
    name, rest = tokens[index : index + 1], tokens[index + 1 :]
    if not rest:
        return Kind.WRITE if not name or name[0] in _PRAGMA_ACTIONS else Kind.READ
    return Kind.READ if name[0] in _PRAGMA_QUERIES and rest[0] == "(" else Kind.WRITE


def _copy(tokens: list[str]) -> Kind:
    """PostgreSQL: ``COPY ... TO STDOUT`` reads; ``FROM``, files and programs write."""
    if tokens[1:2] == ["("]:
        index = _after_group(tokens, 1)
        if index < 0 or _statement(tokens[2 : index - 1]) is not Kind.READ:
            return Kind.WRITE
    else:
        index = 1
        while index < len(tokens) and tokens[index] not in {"(", "FROM", "TO"}:
            index += 1
        if tokens[index : index + 1] == ["("]:
            index = _after_group(tokens, index)
    if index > 0 and tokens[index : index + 2] == ["TO", "STDOUT"]:
        return Kind.READ
    return Kind.WRITE


def _set(tokens: list[str]) -> Kind:
    """``SET`` changes the session, except server-wide settings, passwords and roles."""
    if tokens[1:2] == ["STATEMENT"]:
        # MariaDB: SET STATEMENT variable = value [, ...] FOR statement.
        if "FOR" not in tokens:
            return Kind.WRITE
        kind = _statement(tokens[tokens.index("FOR") + 1 :])
        return Kind.CONTROL if kind is Kind.READ else kind
    if tokens[1:2] == ["PASSWORD"] or tokens[1:3] == ["DEFAULT", "ROLE"]:
        return Kind.WRITE
    for index in range(1, len(tokens)):
        if tokens[index] in _SERVER_SCOPES and (
            tokens[index - 1] in {"SET", ","} or tokens[index - 2 : index] == ["@", "@"]
        ):
            return Kind.WRITE
    # A subquery in a value may lock or call nextval().
    return Kind.WRITE if _reads_only(tokens) is Kind.WRITE else Kind.CONTROL


def _reset(tokens: list[str]) -> Kind:
    """``RESET setting`` is session state; MySQL's ``RESET MASTER`` and the like are not."""
    return Kind.WRITE if tokens[1:2] and tokens[1] in _RESET_WRITES else Kind.CONTROL


def _start(tokens: list[str]) -> Kind:
    """``START TRANSACTION`` is control; ``START SLAVE`` / ``START REPLICA`` write."""
    return Kind.CONTROL if tokens[1:2] == ["TRANSACTION"] else Kind.WRITE


def _prepare(tokens: list[str]) -> Kind:
    """``PREPARE TRANSACTION`` is control; a prepared statement could be anything."""
    return Kind.CONTROL if tokens[1:2] == ["TRANSACTION"] else Kind.WRITE


def _declare(tokens: list[str]) -> Kind:
    """PostgreSQL: ``DECLARE name CURSOR ... FOR query`` is a session's cursor over its query."""
    if "CURSOR" not in tokens or "FOR" not in tokens[tokens.index("CURSOR") :]:
        return Kind.WRITE
    query = tokens[tokens.index("FOR", tokens.index("CURSOR")) + 1 :]
    return Kind.CONTROL if _statement(query) is Kind.READ else Kind.WRITE


_RULES: dict[str, Callable[[list[str]], Kind]] = {
    "SELECT": _query,
    "VALUES": _query,
    "TABLE": _query,
    "(": _query,
    "WITH": _with,
    "EXPLAIN": _explain,
    "DESCRIBE": _explain,
    "DESC": _explain,
    "ANALYZE": _analyze,
    "ANALYSE": _analyze,
    "SHOW": lambda tokens: Kind.READ,
    "PRAGMA": _pragma,
    "COPY": _copy,
    "SET": _set,
    "RESET": _reset,
    "START": _start,
    "PREPARE": _prepare,
    "DECLARE": _declare,
}
