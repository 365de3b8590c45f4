"""The text of a user's SQL statement, as `pdspace query` checks it before the database sees it:
exactly one statement (a trailing semicolon allowed), and its leading keyword.

A small lexer that knows where comments, string literals, quoted identifiers and (PostgreSQL)
dollar-quoted strings begin and end, so a semicolon inside them is not a statement boundary. It is
a guard in front of the real one, the read-only connection (results.read.query): where this lexer
and the database's disagree, the database still refuses to write.
"""
from __future__ import annotations

import re

__all__ = ["one_statement", "REFUSED_KEYWORDS"]

REFUSED_KEYWORDS = {
    "ATTACH": "attaches another database file",
    "DETACH": "detaches a database",
    "VACUUM": "rewrites the database (VACUUM INTO writes a file)",
    "COPY": "reads or writes files and programs on the server",
    "DO": "runs procedural code",
    "CALL": "runs a procedure",
}
"""Leading keywords refused even though a read-only transaction might let them through: they
touch files, other databases or run code."""

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_]+")


def _skip(sql: str, i: int, dialect: str) -> int:
    """If a comment, literal or quoted identifier starts at i, the index just past it; else i."""
    c, nxt = sql[i], sql[i + 1:i + 2]
    if c == "-" and nxt == "-":
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if c == "/" and nxt == "*":  # PostgreSQL nests block comments, SQLite does not
        depth, j = 1, i + 2
        while j < len(sql) and depth:
            if sql.startswith("*/", j):
                depth, j = depth - 1, j + 2
            elif dialect == "postgresql" and sql.startswith("/*", j):
                depth, j = depth + 1, j + 2
            else:
                j += 1
        return j
    if c in "'\"" or (c in "`[" and dialect == "sqlite"):
        close = "]" if c == "[" else c
        escapes = (c == "'" and dialect == "postgresql" and i > 0 and sql[i - 1] in "eE"
                   and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_")))
        j = i + 1
        while j < len(sql):
            if escapes and sql[j] == "\\":
                j += 2
                continue
            if sql[j] == close:
                if close != "]" and sql[j + 1:j + 2] == close:  # '' or "" inside
                    j += 2
                    continue
                return j + 1
            j += 1
        return len(sql)
    if c == "$" and dialect == "postgresql" and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
        tag = _DOLLAR.match(sql, i)
        if tag:
            end = sql.find(tag.group(0), tag.end())
            return len(sql) if end < 0 else end + len(tag.group(0))
    return i


def one_statement(sql: str, dialect: str) -> str:
    """``sql`` without a trailing semicolon, when it is one statement whose leading keyword is not
    refused (REFUSED_KEYWORDS); ValueError (one sentence) otherwise. dialect: "sqlite",
    "postgresql" or another backend's name (read like PostgreSQL without its extras)."""
    i, end, first = 0, None, None
    while i < len(sql):
        j = _skip(sql, i, dialect)
        if j != i:
            i = j
            continue
        c = sql[i]
        if c == ";":
            if end is None:
                end = i
        elif not c.isspace():
            if end is not None:
                raise ValueError("pdspace query runs one statement per call; this text holds more than one "
                                 f"(a statement follows the semicolon at character {end + 1})")
            if first is None and c.isalpha():
                first = _WORD.match(sql, i).group(0).upper()
        i += 1
    statement = sql[:end] if end is not None else sql
    if first is None:
        raise ValueError("the query is empty: pass one SQL statement, e.g. \"SELECT name FROM studies\"")
    if first in REFUSED_KEYWORDS:
        raise ValueError(f"pdspace query is read-only and refuses {first}, which {REFUSED_KEYWORDS[first]}")
    return statement
