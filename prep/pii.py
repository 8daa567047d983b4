"""The one PII scrubber: mobile numbers, ID-card numbers, e-mails, bank cards.

Each match is replaced by a placeholder and counted per kind. ID cards are
checked with the GB 11643 checksum and bank cards with Luhn, so ordinary long
numbers (order numbers, the 400 hotline) are left alone.
"""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDERS = {
    "id_card": "[身份证号]",
    "bank_card": "[银行卡号]",
    "mobile": "[手机号]",
    "email": "[邮箱]",
}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_ID_CARD = re.compile(r"(?<![0-9])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9])")
_BANK_CARD = re.compile(r"(?<!\d)(?:\d{4}[ -]){3,4}\d{1,4}(?!\d)|(?<!\d)\d{16,19}(?!\d)")
_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _valid_id_card(number: str) -> bool:
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def _valid_luhn(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    if not 16 <= len(digits) <= 19:
        return False
    checksum = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        checksum += digit
    return checksum % 10 == 0


def scrub_pii(text: str) -> tuple[str, Counter]:
    """Replace personal data in ``text`` with placeholders; return the text and counts per kind."""
    counts: Counter = Counter()

    def replacer(kind: str, check=None):
        def replace(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        return replace

    text = _EMAIL.sub(replacer("email"), text)
    text = _ID_CARD.sub(replacer("id_card", _valid_id_card), text)
    text = _BANK_CARD.sub(replacer("bank_card", _valid_luhn), text)
    text = _MOBILE.sub(replacer("mobile"), text)
    return text, counts
