"""PII redaction: replace personal data and secrets with typed placeholders before training.

A model should not learn to reproduce someone's e-mail address, card number or API key, but
the surrounding text is still worth keeping, so hits are replaced (``<EMAIL>``, ``<SECRET>``, ...)
rather than the document dropped; only documents that are mostly PII (over ``max_hits``) go.

Precision matters as much as recall here: changelogs, manuals and code are full of version
strings, dates, ZIP codes and bug numbers that look like phones or IP addresses. Every numeric
type therefore needs a specific shape *and* a check (Luhn for cards, mod-97 for IBANs, the SSA
rules for SSNs, :mod:`ipaddress` for IPs), and invalid candidates are left untouched.

Address policy: an IP address is redacted only when it is a public host address (global, not
multicast, not reserved). Private, loopback, link-local, shared (CGNAT), unspecified and
documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) identify no one and stay. The ranges are a
table of their own here (`NOT_PUBLIC`, from the IANA special-purpose address registries), not the
`is_global` of the running Python, whose tables changed within the 3.11 and 3.12 releases: the same
input gives the same output on every interpreter. An IPv4
address whose four parts are all single digits ("4.6.0.1") is read as a version number: in
real text those are almost always versions (Standards-Version, upstream releases), and the few
public hosts of that shape are well-known shared resolvers, not personal data. Octets written
padded to three digits ("093.184.216.034") are read as the address they spell.

Obfuscated forms count: e-mails written "x [at] y [dot] com", with a fullwidth "＠", a quoted
local part or URL-encoded ("%40"); numbers grouped by spaces or dots; lowercase IBANs (held to
their country's IBAN length, since lowercase runs are usually hashes). Passwords in URLs
("postgres://app:PASSWORD@host") and API keys and tokens of known shapes are secrets.

Document ids are checked like text: an id holding PII is replaced by the id the reader derives
for a record without one (from its origin and text), and the replacement is counted as
``id_<type>`` in ``pii_types``; the `origin` column still leads back to the input record.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from data_prep.books import doc_stage
from data_prep.readers import derive_id
from data_prep.stage import ID, ORIGIN, TEXT, Decision, DocStage, Drop, replace_column
from pipeline.ground.schema import Section

PII_TYPES: tuple[str, ...] = (
    "secret",
    "email",
    "iban",
    "credit_card",
    "us_ssn",
    "phone",
    "ip_address",
)


def check_types(names: list[str]) -> list[str]:
    """Return `names` if every one is a known PII type, else raise naming the allowed ones."""
    unknown = [name for name in names if name not in PII_TYPES]
    if unknown:
        raise ValueError(f"unknown PII types {unknown}; allowed: {list(PII_TYPES)}")
    return names


def placeholder(kind: str) -> str:
    """The text a hit of `kind` is replaced with, e.g. ``<CREDIT_CARD>``."""
    return f"<{kind.upper()}>"


# --- validators: a candidate that matches a shape is only PII if its check passes ---------


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:])) for entry in (
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
        "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
        "LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 "
        "RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20"
    ).split()
)


def iban_valid(iban: str) -> bool:
    """ISO 13616: length 15-34 and the number formed by moving the first four characters to
    the end (letters as 10..35) is 1 modulo 97. A lowercase candidate must also be a known
    country's IBAN length: lowercase hex hashes pass mod 97 one time in 97."""
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    if not compact[:2].isupper():
        if IBAN_LENGTHS.get(compact[:2].upper()) != len(compact):
            return False
        compact = compact.upper()
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# Addresses that are no public host: not globally reachable in the IANA special-purpose registries,
# multicast, or reserved (IPv4 240/4; IPv6 outside the global unicast 2000::/3). Inside one of these,
# the PUBLIC_EXCEPTIONS are globally reachable all the same.
NOT_PUBLIC = [ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4",
    "240.0.0.0/4",
    "::/3", "4000::/2", "8000::/1", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20",
)]
PUBLIC_EXCEPTIONS = [ipaddress.ip_network(net) for net in (
    "192.0.0.9/32", "192.0.0.10/32",
    "2001:1::1/128", "2001:1::2/128", "2001:3::/32", "2001:4:112::/48", "2001:20::/28", "2001:30::/28",
)]


def public_ip(address: str) -> bool:
    """True for a public host address (see the module docstring for the policy)."""
    parts = address.split(".")
    if len(parts) == 4 and all(part.isdigit() for part in parts):
        if all(len(part) == 1 for part in parts):
            return False
        if all(len(part) == 3 for part in parts):  # "093.184.216.034" spells 93.184.216.34; "1.000.000" no address
            address = ".".join(str(int(part)) for part in parts)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not any(ip in net for net in NOT_PUBLIC) or any(ip in net for net in PUBLIC_EXCEPTIONS)


# --- patterns ---------------------------------------------------------------------------
# Most patterns open with a character class or a literal and test their left boundary just
# after it ("[2-6](?<![\w.].)" rather than "(?<![\w.])[2-6]"): the regex engine can then skip
# ahead to candidate characters instead of trying every position, several times faster.

# An e-mail: local part (or a quoted one), '@' (fullwidth or URL-encoded too), dot-separated
# domain labels, alphabetic TLD.
_EMAIL = re.compile(
    r'(?:(?<![\w.%+-])[\w.%+-]+|"[^"\r\n@]{1,64}")(?:@|\uff20|%40)'
    r"(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,}(?![\w-])"
)
_AT = r"\s*[\[({<]\s*(?i:at)\s*[\])}>]\s*"
_DOT = r"(?:\.|\s*[\[({<]\s*(?i:dot)\s*[\])}>]\s*)"
# Spelled out: "jane [at] example [dot] com", "jane(at)example(dot)com".
_EMAIL_SPELLED = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+" + _AT + r"(?:[^\W_](?:[\w-]*[^\W_])?" + _DOT + r")+[^\W\d_]{2,}(?![\w-])"
)

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    # Through the END line; without one (a truncated paste), through the base64 lines.
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|(?:[ \t]*\r?\n[A-Za-z0-9+/=]+)*)",
    re.DOTALL,
)
_AWS_KEY_ID = re.compile(r"A(?<![A-Za-z0-9].)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
# A 40-character AWS secret is only told apart from any base64 run by its label.
_AWS_SECRET = re.compile(
    r"(?i:aws[_ .-]?secret(?:[_ .-]?access)?[_ .-]?key)[\"']?\s*[:=]\s*[\"']?"
    r"(?P<pii>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
_GITHUB = re.compile(
    r"g(?<![A-Za-z0-9_].)(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{22,244})"
    r"(?![A-Za-z0-9_])"
)
_SLACK = re.compile(r"xox(?<![A-Za-z0-9]...)[abprs]-[A-Za-z0-9-]{10,250}(?![A-Za-z0-9-])")
_SLACK_WEBHOOK = re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{16,}")
_OPENAI = re.compile(
    r"sk-(?<![\w-]...)(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{32,}(?![\w-])"
)
_STRIPE = re.compile(r"[sr](?<![\w-].)k_(?:live|test)_[0-9A-Za-z]{16,}(?!\w)")
_GOOGLE = re.compile(r"A(?<![\w-].)Iza[0-9A-Za-z_-]{35}(?![\w-])")
_JWT = re.compile(r"e(?<![\w-].)yJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# The password of scheme://user:password@host (not CVS roots, "cvs://:pserver:anoncvs@host").
_URL_PASSWORD = re.compile(r"://[^\s:/@]+:(?P<pii>[^\s/@:]+)@[\w\[]")
# The token must hold a digit, so that prose ("the bearer of this letter") never matches.
_BEARER = re.compile(
    r"(?:[Bb]earer|BEARER)(?<![A-Za-z].{6})[ \t]+"
    r"(?P<pii>(?=[A-Za-z._~+/-]*\d)[A-Za-z0-9._~+/-]{16,}=*)"
)

_IBAN = re.compile(
    r"[A-Z](?<!\w.)[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)"
    r"|[a-z](?<!\w.)[a-z]\d\d(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,3})?(?!\w)"
)

# Numbers stand alone: not glued to a word, a version ("1.2+3", "~rc1") or a path. _START goes
# right after a pattern's first character (see above); _END also refuses a following digit
# group, so that a longer number is never cut short. Forms made of space-separated groups
# (cards, national phones) must not follow a digit group either: "DE88 3704 0044 0532" is one
# number, not a phone inside it.
_START = r"(?<![\w.+~/-].)"
_NOT_AFTER_GROUP = r"(?<!\d[ .:].)"
_END = r"(?![\w+~/-]|[ .:]\d)"

# 13-19 digits: unbroken, in groups of four (the last group may be short), or Amex's 4-6-5.
# Issuer prefixes start with 2-6.
_CARD = re.compile(
    r"[2-6]" + _START + _NOT_AFTER_GROUP
    + r"(?:\d{12,18}|\d{3}(?P<sep>[ .-])\d{4}(?:(?P=sep)\d{4}){1,2}(?:(?P=sep)\d{1,3})?|\d{3}[ -]\d{6}[ -]\d{4,5})"
    + _END
)

_SSN = re.compile(r"\d" + _START + r"\d\d(?P<sep>[- ])\d\d(?P=sep)\d{4}" + _END)

# International: +CC, an optional "(0)" or area code in parentheses, then digit groups.
_PHONE_INTL = re.compile(
    r"\+" + _START + r"[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d++){1,6}" + _END
)
# North American: (AAA) BBB-CCCC, AAA-BBB-CCCC, AAA.BBB.CCCC, the last two also after "1-".
_PHONE_NANP_PAREN = re.compile(r"\(" + _START + r"[2-9]\d\d\) ?[2-9]\d\d-\d{4}" + _END)
_PHONE_NANP = re.compile(
    r"[2-9](?:(?<=(?<!\w)1[-. ].)|" + _START + r")"
    r"\d\d(?P<sep>[-.])[2-9]\d\d(?P=sep)\d{4}" + _END
)
# AAA BBB CCCC, not inside a longer run of spaced numbers ("377 610 987 1597").
_PHONE_NANP_SPACED = re.compile(
    r"[2-9](?:(?<=(?<!\w)1 .)|" + _START + _NOT_AFTER_GROUP + r")\d\d [2-9]\d\d \d{4}" + _END
)
# European national form: trunk 0 and area code, then separated groups of two or more digits.
_PHONE_NATIONAL = re.compile(
    r"0" + _START + _NOT_AFTER_GROUP + r"\d{1,4}(?:[ /-]\d{2,8}){1,4}" + _END
)
# National-looking numbers that are dates (05-12-2021, 06/12/21, 0999-01-01), ZIP+4 codes
# (02110-1301) or shaped like an SSN (000-12-3456: an SSN that failed its check is no phone either).
_NOT_PHONE = re.compile(r"\d{1,2}([-/ ])\d{1,2}\1\d{2,4}|\d{4}-\d\d-\d\d|\d{5}-\d{4}|\d{3}-\d\d-\d{4}")

# Not inside a longer dotted number or word ("1.2.3.4.5", "v10.0.0.1", "(1.2.5.1-2)") nor
# after a version relation (">= 1.2.99.3" in package dependencies). Octet ranges and leading
# zeros are left to the ipaddress module.
_IPV4 = re.compile(
    r"\d(?<![\w.+~:-].)(?<![<>]= .)(?<!>> .)(?<!<< .)"
    r"\d{0,2}(?:\.\d{1,3}){3}(?![\w+~]|[.-]\d)"
)
# Hex groups and colons; addresses with an embedded IPv4 tail (::ffff:1.2.3.4) are not taken.
_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){1,7}(?![\w:]|\.\d)"
)


# --- detectors --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Detector:
    """One pattern of one PII type.

    `accept` validates a match (None: every match is a hit); `gate`, when given, is a cheap
    test on the whole text that must pass before the pattern runs at all. When the pattern has
    a group named ``pii`` only that span is replaced, so a label such as "Bearer" stays.
    """

    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    gate: Callable[[str], object] | None = None


def _card(match: re.Match[str]) -> bool:
    return luhn_valid(re.sub(r"[ .-]", "", match.group()))


def _ssn(match: re.Match[str]) -> bool:
    """SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000."""
    area, group, serial = re.split("[- ]", match.group())
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    return 7 <= sum(ch.isdigit() for ch in text) <= 15 and not _NOT_PHONE.fullmatch(text)


# Passwords that documentation writes in URLs ("user:pass@host", "user:<password>@host").
_PLACEHOLDER_PASSWORD = re.compile(r"(?i:pass(?:word|wd)?|pwd|secret|x+|\*+)|[<{$\[%].*")


def _url_password(match: re.Match[str]) -> bool:
    return not _PLACEHOLDER_PASSWORD.fullmatch(match.group("pii"))


def _ip(match: re.Match[str]) -> bool:
    return public_ip(match.group())


# Order matters: earlier hits are replaced first, so later patterns never see their digits
# (an IBAN's digits are not re-read as a card number, a key's body not as anything else).
_DETECTORS: tuple[_Detector, ...] = (
    _Detector("secret", _PEM),
    _Detector("secret", _AWS_KEY_ID),
    _Detector("secret", _AWS_SECRET),
    _Detector("secret", _GITHUB),
    _Detector("secret", _SLACK_WEBHOOK, gate=lambda text: "hooks.slack.com" in text),
    _Detector("secret", _SLACK),
    _Detector("secret", _OPENAI, gate=lambda text: "sk-" in text),
    _Detector("secret", _STRIPE, gate=lambda text: "k_live_" in text or "k_test_" in text),
    _Detector("secret", _GOOGLE, gate=lambda text: "AIza" in text),
    _Detector("secret", _JWT, gate=lambda text: "eyJ" in text),
    _Detector("secret", _BEARER),
    _Detector("email", _EMAIL, gate=lambda text: "@" in text or "\uff20" in text or "%40" in text),
    # After e-mails: in "user:pw@example.com" the address goes, and the password with it.
    _Detector("secret", _URL_PASSWORD, _url_password, lambda text: "://" in text),
    _Detector("email", _EMAIL_SPELLED, gate=re.compile(r"[\[({<]\s*(?i:at)\s*[\])}>]").search),
    _Detector("iban", _IBAN, lambda match: iban_valid(match.group())),
    _Detector("credit_card", _CARD, _card),
    _Detector("us_ssn", _SSN, _ssn, re.compile(r"[- ]\d\d[- ]").search),
    _Detector("phone", _PHONE_INTL, _phone),
    _Detector("phone", _PHONE_NANP_PAREN, _phone),
    _Detector("phone", _PHONE_NANP, _phone),
    _Detector("phone", _PHONE_NANP_SPACED, _phone),
    _Detector("phone", _PHONE_NATIONAL, _phone),
    _Detector("ip_address", _IPV4, _ip, re.compile(r"\.\d{1,3}\.\d{1,3}\.").search),
    _Detector("ip_address", _IPV6, _ip, re.compile(r":[0-9A-Fa-f]{0,4}:").search),
)


class PiiRedactor:
    """Replaces PII in text with typed placeholders; pure and reusable across documents."""

    def __init__(self, enabled_types: list[str] | None = None) -> None:
        kinds = check_types(list(PII_TYPES) if enabled_types is None else enabled_types)
        self._detectors = [d for d in _DETECTORS if d.kind in kinds]

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """Return `text` with every hit replaced and the number of hits per type (hits only)."""
        counts: dict[str, int] = {}
        for detector in self._detectors:
            if detector.gate is not None and not detector.gate(text):
                continue
            text = detector.pattern.sub(_replacer(detector, counts), text)
        return text, counts


def _replacer(detector: _Detector, counts: dict[str, int]) -> Callable[[re.Match[str]], str]:
    mark = placeholder(detector.kind)
    has_group = "pii" in detector.pattern.groupindex

    def replace(match: re.Match[str]) -> str:
        whole = match.group()
        if detector.accept is not None and not detector.accept(match):
            return whole
        counts[detector.kind] = counts.get(detector.kind, 0) + 1
        if not has_group:
            return mark
        start, end = match.start("pii") - match.start(), match.end("pii") - match.start()
        return whole[:start] + mark + whole[end:]

    return replace


# --- config and stage -------------------------------------------------------------------


class PiiConfig(Section):
    """Which PII types to redact and when a document has too much of it to keep."""

    enabled_types: list[str] = Field(
        default_factory=lambda: list(PII_TYPES),
        description=f"PII types to redact; any of {list(PII_TYPES)}.",
    )
    max_hits: int | None = Field(
        default=None,
        ge=0,
        description="Drop a document with more PII hits than this (None: never drop).",
    )

    _known_types = field_validator("enabled_types")(check_types)


class PiiStage(DocStage):
    """Redacts every document and replaces ids holding PII; adds `pii_hits` (total) and `pii_types`
    (JSON counts per type, ``id_<type>`` for hits in the id)."""

    name: ClassVar[str] = "pii"

    def __init__(self, config: PiiConfig) -> None:
        self.config = config
        self.redactor = PiiRedactor(config.enabled_types)

    def decide(self, table: pa.Table) -> Decision:
        texts: list[str] = []
        ids: list[str] = []
        hits: list[int] = []
        types: list[str] = []
        drops: dict[int, Drop] = {}
        limit = self.config.max_hits
        origins = table.column(ORIGIN).to_pylist() if ORIGIN in table.column_names else [None] * table.num_rows
        for row, (doc_id, text) in enumerate(zip(table.column(ID).to_pylist(), table.column(TEXT).to_pylist())):
            redacted, counts = self.redactor.redact(text)
            _, id_counts = self.redactor.redact(doc_id)
            if id_counts:
                doc_id = derive_id(origins[row] or "", text)
                counts |= {f"id_{kind}": n for kind, n in id_counts.items()}
            total = sum(counts.values())
            texts.append(redacted)
            ids.append(doc_id)
            hits.append(total)
            types.append(json.dumps(counts, sort_keys=True))
            if limit is not None and total > limit:
                drops[row] = Drop("too_much_pii", {"hits": total, "by_type": counts})
        table = replace_column(table, ID, pa.array(ids, pa.string()))
        table = replace_column(table, TEXT, pa.array(texts, pa.string()))
        table = replace_column(table, "pii_hits", pa.array(hits, pa.int64()))
        table = replace_column(table, "pii_types", pa.array(types, pa.string()))
        return Decision(table, drops)

    def tally(self, kept: pa.Table) -> dict[str, dict[str, int]]:
        redacted: Counter[str] = Counter()
        for counts in kept.column("pii_types").to_pylist():
            redacted.update(json.loads(counts))
        return {"redacted": dict(redacted)}


STAGE = doc_stage(PiiStage, PiiConfig)
