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
with leading zeros ("8.8.008.008", "093.184.216.034") are read as the address they spell, unless
the whole reads as a number with thousands separators ("1.000.000.000"). A dotted quad right after
a version word ("release 2.4.52.1", "kernel 5.10.162.1", "bump ... to 3.2.15.4") is a version, and a
number introduced as an identifier ("ISSN 0317-8471", "EAN 5901234123457") is no phone or card.

Obfuscated forms count: e-mails written "x [at] y [dot] com", "x(a)y.com", "x dot y at z dot com",
"X AT Y.COM", "x @ y.com", with a fullwidth "＠", a quoted local part or URL-encoded ("%40");
numbers grouped by spaces, dots or a bracketed area code; lowercase IBANs (held to their country's
IBAN length, since lowercase runs are usually hashes). Secrets are passwords in URLs (any scheme, up
to the last "@" before the host: "postgres://app:p@ss&word@host"), values given to a name that says
so ("password: ...", "DB_PASSWORD=...", "api_key = '...'", "<password>...</password>", "Authorization:
Basic ..."; not code such as "password = getpass()", nor placeholders such as "${DB_PASSWORD}") and
API keys and tokens of known shapes.

No pattern backtracks without end: runs are bounded or possessive, so that the slowest hostile
1 MB line of one repeated fragment runs at about a quarter of the rate of ordinary text (the pii
rows of bench/prep_bench.py).

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
    (entry[:2], int(entry[2:]))
    for entry in (
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
NOT_PUBLIC = [
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/3",
        "4000::/2",
        "8000::/1",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
    )
]
PUBLIC_EXCEPTIONS = [
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.9/32",
        "192.0.0.10/32",
        "2001:1::1/128",
        "2001:1::2/128",
        "2001:3::/32",
        "2001:4:112::/48",
        "2001:20::/28",
        "2001:30::/28",
    )
]


# The first group of an IPv6 address in the global unicast range 2000::/3, the only one with public hosts.
_GLOBAL_UNICAST_START = re.compile(r"[23][0-9A-Fa-f]{3}:")


def public_ip(address: str) -> bool:
    """True for a public host address (see the module docstring for the policy)."""
    if ":" in address and not _GLOBAL_UNICAST_START.match(address):  # no parsing for "a::", "::ffff:..."
        return False
    parts = address.split(".")
    if len(parts) == 4 and all(part.isdigit() for part in parts):
        if all(len(part) == 1 for part in parts):
            return False
        thousands = parts[0][0] != "0" and all(len(part) == 3 for part in parts[1:])  # "1.000.000.000"
        if not thousands:  # "8.8.008.008" and "093.184.216.034" spell the addresses without the zeros
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
# File extensions that are no top-level domain: "logo@2x.png" is an image, not an address.
_FILE_EXTENSIONS = frozenset(
    "bmp cfg css csv dll exe gif gz htm html ico ini jar jpeg jpg js json lock log pdf png svg tar tif tiff toml "
    "ts tsv txt webp whl xml xz yaml yml".split()
)

# Spelled out: "jane [at] example [dot] com", "jane(at)example(dot)com", "jane(a)example.se", "bob dot smith at
# example dot com", "JANE AT EXAMPLE.ORG", "jane @ example.org". Words are possessive and bounded ({0,63}+,
# {0,6}, ...), so that a long run of "x dot x dot ..." costs linear time. The bare word "at" and the spaced "@"
# (also matrix multiplication: "x @ self.weight") are checked further by `_spelled_email`.
_BARE = r"[ \t]+"
_AT = (
    r"(?P<at>\s*[\[({<]\s*(?i:at|@)\s*[\])}>]\s*|\(a\)"
    r"|(?P<bare>" + _BARE + r"(?i:at)" + _BARE + r")|(?P<spaced>" + _BARE + "@" + _BARE + r"))"
)
_DOT = r"(?:\.|\s*[\[({<]\s*(?i:dot|\.)\s*[\])}>]\s*|" + _BARE + r"(?i:dot)" + _BARE + r")"
_EMAIL_SPELLED = re.compile(
    r"[\w%+-](?<![\w.%+-].)[\w%+-]{0,63}+(?:"
    + _DOT
    + r"[\w%+-]{1,64}+){0,6}"
    + _AT
    + r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?"
    + _DOT
    + r"){1,8}[^\W\d_]{2,24}(?![\w-])"
)
_WORD = re.compile(r"[^\W\d_]+")
_SPELLED_DOT = re.compile(r"(?i:\bdot\b)|[\[({<]\s*\.")
# Words that make "X at Y dot Z" prose: "worked at a dot com", "look at the dot product".
_PROSE_WORDS = frozenset(
    "a an the this that these those my your our their his her its one some any each every no all least most "
    "i me we us you he him she it they them is was are were be been am look looked looking work worked "
    "working available based located arrive arrived aim aimed stare stared".split()
)
# Top-level domains common enough that "JANE AT EXAMPLE.ORG" or "jane @ example.org" read as an address.
_COMMON_TLDS = frozenset(
    "com org net edu gov mil int info biz io co me uk de fr nl es it se no dk fi pl ch at be ie pt cz ru jp cn "
    "kr in au nz ca us br mx ar eu test example invalid".split()
)

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    # Through the END line; without one (a truncated paste), through the base64 lines. A key's body
    # holds no "-----", so each BEGIN is read only up to the next marker: linear time on any text.
    r"(?:[^-]*+(?:-(?!----)[^-]*+)*+-----END [A-Z0-9 ]*PRIVATE KEY-----|(?:[ \t]*\r?\n[A-Za-z0-9+/=]+)*)"
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
# Possessive: a shorter run is always followed by one more token character, so giving some back never helps.
_SLACK = re.compile(r"xox(?<![A-Za-z0-9]...)[abprs]-[A-Za-z0-9-]{10,250}+(?![A-Za-z0-9-])")
_SLACK_WEBHOOK = re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{16,}")
_OPENAI = re.compile(r"sk-(?<![\w-]...)(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{32,}(?![\w-])")
_STRIPE = re.compile(r"[sr](?<![\w-].)k_(?:live|test)_[0-9A-Za-z]{16,}(?!\w)")
_GOOGLE = re.compile(r"A(?<![\w-].)Iza[0-9A-Za-z_-]{35}(?![\w-])")
_JWT = re.compile(r"e(?<![\w-].)yJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# The password of scheme://user:password@host, up to the last "@" before the host: a password
# may hold "@", ":" or "&". Runs are bounded, so that many "://" on one line cost linear time.
_URL_PASSWORD = re.compile(r"://(?P<user>[^\s:/@]{0,128}):(?P<pii>[^\s/?#\"'<>]{1,256})@(?=[\w\[])")
# A secret given to a name that says so ("password: hunter2", "DB_PASSWORD=...", "api_key = '...'",
# "--password=...", '"passwd": "..."', "dbPassword => '...'", "<password>...</password>"); only the
# value is replaced. The patterns start at the separator, a character class the engine scans for
# fast (a case-insensitive alternation of names at the start is several times slower);
# `_assigned_secret` then reads the name that ends just before it (`_SECRET_NAME`) and tells values
# from code and placeholders. An unquoted value stops at "=", so that the value of "user=bob&password=..."
# is "bob&password" and the password's own "=" starts the next match.
_SECRET_ASSIGNMENT = re.compile(
    r"(?:=>|:=|[:=])(?!=)[ \t]*(?P<q>[\"'])?"
    r"(?P<pii>(?(q)[^\"'\r\n]{4,128}|[^\s\"'`,;=()\[\]{}<>]{3,127}[^\s\"'`,;=()\[\]{}<>.:]))(?(q)(?P=q))"
)
_SECRET_ELEMENT = re.compile(r">(?P<pii>[^\s<>]{4,128})</")
_SECRET_NAME = re.compile(
    r"(?<!/)(?i:pass(?:word|wd|phrase)|pwd|secret(?:[_-]?key)?|api[_-]?(?:key|token)|access[_-]?(?:key|token)"
    r"|auth[_-]?token|refresh[_-]?token|private[_-]?key)$|_TOKEN$"
)
_BASIC_AUTH = re.compile(
    r"(?i:authorization)[\"']?[ \t]*[:=][ \t]*[\"']?(?i:basic)[ \t]+(?P<pii>[A-Za-z0-9+/]{8,}={0,2})"
)
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
    r"[2-6]"
    + _START
    + _NOT_AFTER_GROUP
    + r"(?:\d{12,18}|\d{3}(?P<sep>[ .-])\d{4}(?:(?P=sep)\d{4}){1,2}(?:(?P=sep)\d{1,3})?|\d{3}[ -]\d{6}[ -]\d{4,5})"
    + _END
)

_SSN = re.compile(r"\d" + _START + r"\d\d(?P<sep>[- ])\d\d(?P=sep)\d{4}" + _END)

# International: +CC, an optional "(0)" or area code in parentheses, then digit groups.
_PHONE_INTL = re.compile(r"\+" + _START + r"[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d++){1,6}" + _END)
# A bracketed area code with its trunk 0 ("(020) 7946 0958", "(0161) 496 0777", "(02) 5550 4321"),
# or Brazil's two digits before a mobile or landline number ("(11) 91234-5678").
_PHONE_AREA_PAREN = re.compile(
    r"\(" + _START + r"(?:0\d{1,4}\)[ -]?\d{2,8}(?:[ -]\d{2,8}){0,3}|[1-9]\d\) ?9?\d{4}-\d{4})" + _END
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
# European national form: trunk 0 and area code, then separated groups of two or more digits
# ("030 1234567", "030/1234567", "089 / 1234 5678"); or the French pairs written with dots ("06.12.34.56.78").
_PHONE_NATIONAL = re.compile(
    r"0" + _START + _NOT_AFTER_GROUP + r"(?:\d{1,4}(?:(?:[ /-]| / )\d{2,8}){1,4}|\d(?:\.\d\d){4})" + _END
)
# National-looking numbers that are dates (05-12-2021, 06/12/21, 06 / 12 / 21, 0999-01-01), ZIP+4 codes
# (02110-1301) or shaped like an SSN (000-12-3456: an SSN that failed its check is no phone either).
_NOT_PHONE = re.compile(r"\d{1,2}( / |[-/ ])\d{1,2}\1\d{2,4}|\d{4}-\d\d-\d\d|\d{5}-\d{4}|\d{3}-\d\d-\d{4}")

# What the text says just before a candidate (searched in a short window that ends at it).
# A number introduced as an identifier ("ISSN 0317-8471", "EAN 5901234123457") is that identifier.
_IDENTIFIER_LABEL = re.compile(
    r"(?i:\b(?:isbn(?:-1[03])?|issn|ean(?:-?1[38])?|upc|gtin|sku|asin|orcid|doi|serial|part|order|invoice|tracking"
    r"|article|catalog(?:ue)?)(?:[ \t]+(?:no\.?|number|#))?[ \t]*[:#]?[ \t]*)$"
)
# A dotted quad right after a version word, or at the end of "updated ... to", is a version ("New upstream
# release 2.4.52.1", "kernel 5.10.162.1", "Bump version to 3.2.15.4", "see section 12.3.4.5").
_VERSION_CONTEXT = re.compile(
    r"(?i:\b(?:version|release|upstream|kernel|firmware|section|chapter|clause|ver\.?|rev\.?|v)[ \t]*[:#]?[ \t]*"
    r"|\b(?:updat|upgrad|bump)\w*[^.,;:!?\n]{0,40}\bto[ \t]+)$"
)


def _preceded_by(match: re.Match[str], context: re.Pattern[str]) -> bool:
    return context.search(match.string, max(0, match.start() - 48), match.start()) is not None


# Not inside a longer dotted number or word ("1.2.3.4.5", "v10.0.0.1", "(1.2.5.1-2)") nor
# after a version relation (">= 1.2.99.3" in package dependencies); the tail of an IPv4-mapped
# IPv6 address ("::ffff:93.184.216.34") counts. Octet ranges and leading zeros are left to
# `public_ip`.
_IPV4 = re.compile(
    r"\d(?:(?<=(?i:ffff):.)|(?<![\w.+~:-].)(?<![<>]= .)(?<!>> .)(?<!<< .))"
    r"\d{0,2}(?:\.\d{1,3}){3}(?![\w+~]|[.-]\d)"
)
# Hex groups and colons; of an address with an embedded IPv4 tail (::ffff:1.2.3.4) only the tail is taken.
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){1,7}(?![\w:]|\.\d)")


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
    return luhn_valid(re.sub(r"[ .-]", "", match.group())) and not _preceded_by(match, _IDENTIFIER_LABEL)


def _ssn(match: re.Match[str]) -> bool:
    """SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000."""
    area, group, serial = re.split("[- ]", match.group())
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    return (
        7 <= sum(ch.isdigit() for ch in text) <= 15
        and not _NOT_PHONE.fullmatch(text)
        and not _preceded_by(match, _IDENTIFIER_LABEL)
    )


# Passwords that documentation and config templates write ("user:pass@host", "user:<password>@host",
# "password: ${DB_PASSWORD}", "password: ********"), YAML tags, anchors and aliases ("!vault", "*db_pw").
_PLACEHOLDER_PASSWORD = re.compile(
    r"(?i:pass(?:word|wd|phrase)?|pwd|secret|changeme|none|null|nil|true|false|undefined|string|required|optional"
    r"|example)|[<{$\[%!&*].*|.*(?:\{\{|\$\{|%\().*|(.)\1*"
)
# Unquoted values that are no secret: words, names and attribute chains in any script ("getpass", "MẬT_KHẨU",
# "settings.SECRET_KEY"), field lists ("name:password:GID:user_list"), paths ("/run/secrets/db"), URLs.
_CODE_VALUE = re.compile(r"(?:[^\W\d]|-)+(?:[.:](?:[^\W\d]|-)+)*|[/~.].*|\w+://.*")


def _url_password(match: re.Match[str]) -> bool:
    password = match.group("pii")
    cvs_root = not match.group("user") and ":" in password  # "cvs://:pserver:anoncvs@host"
    return not (cvs_root or _PLACEHOLDER_PASSWORD.fullmatch(password))


def _assigned_secret(match: re.Match[str]) -> bool:
    """A value given to a secret's name is a secret unless it is a placeholder or code. Quoted, it
    may hold spaces only after a password's name; bare digits are a PIN after a password's name,
    a count after a token's ("MAX_TOKEN=4096")."""
    value = match.group("pii")
    name = _SECRET_NAME.search(match.string[max(0, match.start() - 32) : match.start()].rstrip(" \t\"'"))
    if name is None or _PLACEHOLDER_PASSWORD.fullmatch(value):
        return False
    password_name = name.group().lower().startswith(("pass", "pwd"))
    if match.groupdict().get("q"):
        return password_name or " " not in value
    if value.isdigit():
        return password_name
    return not _CODE_VALUE.fullmatch(value)


def _email(match: re.Match[str]) -> bool:
    return match.group().rsplit(".", 1)[-1].lower() not in _FILE_EXTENSIONS


def _spelled_email(match: re.Match[str]) -> bool:
    """Brackets around "at" make an address; the bare word "at" needs a spelled "dot" as well, an
    upper-case "AT" or a spaced "@" a spelled "dot" or a common TLD. No address has an article or
    pronoun for a label ("worked at a dot com"), nor a prose word before a bare "at"."""
    domain = _WORD.findall(match.string[match.end("at") : match.end()].lower())
    if any(word in _PROSE_WORDS for word in domain[:-1]):
        return False
    if not (match.group("bare") or match.group("spaced")):
        return True
    local = _WORD.findall(match.string[match.start() : match.start("at")].lower())
    if local[-1:] and local[-1] in _PROSE_WORDS:
        return False
    loud = match.group("spaced") or match.group("bare").strip() == "AT"
    return bool(_SPELLED_DOT.search(match.group()) or (loud and domain[-1] in _COMMON_TLDS))


def _may_name_secret(text: str) -> bool:
    """Whether `text` holds "pass", "pwd", "secret", "key" or "token", one of which every `_SECRET_NAME`
    holds: ":" and "=" are everywhere, the names are not."""
    lowered = text.lower()
    return "pass" in lowered or "pwd" in lowered or "secret" in lowered or "key" in lowered or "token" in lowered


_BRACKETED_AT = re.compile(r"[\[({<]\s*(?i:at)\s*[\])}>]")
_AT_SIGN_BEFORE_BRACKET = re.compile(r"@\s*[\])}>]")
_GLUED_A = re.compile(r"\(a\)(?<=\w...)(?=\w)")
_SPELLED_DOTS = (" dot ", "dot]", "dot)", "dot}", "dot>")


def _may_spell_email(text: str) -> bool:
    """Whether `text` holds a form `_EMAIL_SPELLED` may accept. The pattern tries every word, so
    this gate keeps it off most documents, with substring tests where they do: they cost a fraction
    of a regex scan, and a one-character test less than a longer one."""
    if " AT " in text or ("@" in text and (" @ " in text or _AT_SIGN_BEFORE_BRACKET.search(text))):
        return True
    if " at " in text:
        if "[.]" in text or "(.)" in text:
            return True
        if "dot" in text or "DOT" in text or "Dot" in text:
            lowered = text.lower()
            if any(dot in lowered for dot in _SPELLED_DOTS):
                return True
    if "(a)" in text and _GLUED_A.search(text):  # "(a)" alone is mostly a list item
        return True
    return _BRACKETED_AT.search(text) is not None


def _ip(match: re.Match[str]) -> bool:
    return public_ip(match.group()) and not _preceded_by(match, _VERSION_CONTEXT)


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
    _Detector("secret", _BASIC_AUTH, gate=lambda text: "uthorization" in text or "UTHORIZATION" in text),
    _Detector("secret", _SECRET_ASSIGNMENT, _assigned_secret, _may_name_secret),
    _Detector("secret", _SECRET_ELEMENT, _assigned_secret, lambda text: "</" in text and _may_name_secret(text)),
    # Before e-mails: in "scheme://user:pass&word@example.com" the password must go whole, not be
    # read as the address "word@example.com".
    _Detector("secret", _URL_PASSWORD, _url_password, lambda text: "://" in text),
    _Detector("email", _EMAIL, _email, lambda text: "@" in text or "\uff20" in text or "%40" in text),
    _Detector("email", _EMAIL_SPELLED, _spelled_email, _may_spell_email),
    _Detector("iban", _IBAN, lambda match: iban_valid(match.group())),
    _Detector("credit_card", _CARD, _card),
    _Detector("us_ssn", _SSN, _ssn, re.compile(r"[- ]\d\d[- ]").search),
    _Detector("phone", _PHONE_INTL, _phone),
    _Detector("phone", _PHONE_NANP_PAREN, _phone),
    _Detector("phone", _PHONE_AREA_PAREN, _phone),
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
        """Replacements per type, and the kept documents that had any (the prep table's `changed`)."""
        redacted: Counter[str] = Counter()
        for counts in kept.column("pii_types").to_pylist():
            redacted.update(json.loads(counts))
        changed = sum(hits > 0 for hits in kept.column("pii_hits").to_pylist())
        return {"redacted": dict(redacted), self.name: {"documents_changed": changed}}


STAGE = doc_stage(PiiStage, PiiConfig)
