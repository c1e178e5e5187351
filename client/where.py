"""The command line's --where clauses as an SDK filter (client.filters). Repeated clauses all hold.

    label=cat,dog    any of    label!=cat   none of    n>3  n>=3  n<3  n<=3   numeric ranges

A human typing label=3 means "3" whether the collection stored the text "3" or the number 3, so a value
that reads as a number or a boolean matches either form; quote it ('"3"') to match the text only.
"""

import json
import re

from client.connection import UsageError

CLAUSE = re.compile(r"^(?P<key>[^=!<>]+?)(?P<op>!=|>=|<=|=|>|<)(?P<value>.*)$", re.S)


def candidates(text: str) -> list:
    """The values a typed word may stand for."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return [text[1:-1]]
    found: list = [text]
    lowered = text.lower()
    if lowered in ("true", "false"):
        found.append(lowered == "true")
    else:
        try:
            number = json.loads(text)
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                found.append(number)
        except ValueError:
            pass
    return found


def parse_where(clauses: list[str]) -> dict | None:
    parts = []
    for clause in clauses:
        match = CLAUSE.match(clause.strip())
        if not match or not match["key"].strip() or match["value"] == "":
            raise UsageError(f"--where {clause!r}: write KEY=V1,V2, KEY!=V, KEY>N, KEY>=N, KEY<N or KEY<=N")
        key, op, value = match["key"].strip(), match["op"], match["value"].strip()
        if op in ("=", "!="):
            values = [v for word in value.split(",") for v in candidates(word.strip())]
            parts.append({key: {"in" if op == "=" else "nin": values}})
        else:
            try:
                bound = float(value)
            except ValueError:
                raise UsageError(f"--where {clause!r}: {op} compares numbers, and {value!r} is not one") from None
            parts.append({key: {{">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op]: bound}})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$all": parts}
