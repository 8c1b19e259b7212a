"""The ListOps vocabulary: the token ids the datamodule writes and the models read.

Both sides need the same ids: `zoo.data.listops` tokenizes expressions into
them, `zoo.models.listops` sizes its embeddings by them, maps the digit tokens
to their values and draws trees with their symbols. The vocabulary lives here,
beside both, so that models never import data.

    >>> VOCABULARY[TOKEN_ID["[SM"]]
    '[SM'
"""

from __future__ import annotations

__all__ = ["CLOSE", "DIGITS", "OPERATORS", "PAD", "TOKEN_ID", "VOCABULARY"]

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
PAD = "<pad>"
VOCABULARY: tuple[str, ...] = (PAD, *DIGITS, *OPERATORS, CLOSE)
"""Token ids: 0 padding, 1-10 the digits 0-9, 11-14 the operators, 15 ``]``."""
TOKEN_ID = {token: i for i, token in enumerate(VOCABULARY)}
