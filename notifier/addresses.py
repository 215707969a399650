"""Email addresses and E.164 phone numbers: the reference libraries' answers, fast.

``email-validator`` and ``phonenumbers`` define what the event contract
accepts, and they stay the reference. Asking them costs 20-30 us per value,
most of it generality our inputs never need (display names, quoting, IDNA,
national formats, guessing regions), and that was half of what publishing an
event cost. The functions here answer for the shapes nearly every real value
has, the way the library would, and return ``None`` ("ask the library") for
anything else: unusual syntax, and every value the library would reject, so
rejections and their messages still come from the library itself.

tests/unit/test_events_fast_paths.py checks with hypothesis that whenever these
functions answer, the library gives the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import email_validator
import phonenumbers
from email_validator.rfc_constants import (
    ATEXT,
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DNS_LABEL_LENGTH_LIMIT,
    DOMAIN_MAX_LENGTH,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)
from phonenumbers import PhoneMetadata, PhoneNumberDesc

__all__ = ["E164", "email_fast_path", "phone_fast_path"]

# ASCII only: a dot-atom local part (RFC 5322 3.2.3, the library's ATEXT) and
# a hostname of LDH labels that neither start nor end with a hyphen, at most
# 63 characters each, at least two of them. Everything email-validator does to
# other inputs (NFC, UTS-46 and IDNA, quoting, display names) is then a no-op.
_LABEL = rf"[A-Za-z0-9](?:[A-Za-z0-9-]{{0,{DNS_LABEL_LENGTH_LIMIT - 2}}}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"([{ATEXT}]+(?:\.[{ATEXT}]+)*)@((?:{_LABEL}\.)+{_LABEL})")

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
"""The shape the event contract demands of a phone number, before phonenumbers judges it."""


def email_fast_path(address: str) -> str | None:
    """``validate_email(address, check_deliverability=False).normalized``, or ``None``.

    ``None`` means "not answered here": the caller must ask email-validator,
    which also gives the reason when the address is invalid.
    """
    match = _PLAIN_ADDRESS.fullmatch(address)
    if match is None:
        return None
    local, domain = match.groups()
    if (
        # ASCII, so characters are bytes: the whole address, its original,
        # normalized and IDNA forms all have this length.
        len(address) > EMAIL_MAX_LENGTH
        or len(domain) > DOMAIN_MAX_LENGTH
        # Rejected only in email-validator's strict mode (off unless a caller
        # changes the library's defaults): the answer must not depend on that.
        or len(local) > LOCAL_PART_MAX_LENGTH
        # Punycode ("xn--") needs an IDNA round trip, other "ab--" labels are
        # rejected (RFC 5890 R-LDH): the library's business either way.
        or "--" in domain
        # Every TLD ends with a letter (the library's DOMAIN_NAME_REGEX).
        or not domain[-1].isalpha()
        # .local, .test, .onion, ...: rejected; read at call time, as the library does.
        or domain[domain.rfind(".") + 1 :].lower() in email_validator.SPECIAL_USE_DOMAIN_NAMES
    ):
        return None
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        local = local.lower()  # RFC 2142 role mailboxes, e.g. Postmaster@
    # UTS-46 mapping of an ASCII domain is lower-casing, and nothing else here changes.
    return f"{local}@{domain.lower()}"


def _pattern(desc: PhoneNumberDesc | None, length: int) -> str | None:
    # phonenumbers' _is_number_matching_desc: no description, a length the
    # description does not allow, or an empty pattern never match.
    if desc is None or (desc.possible_length and length not in desc.possible_length):
        return None
    return desc.national_number_pattern or None


@dataclass
class _Region:
    """``_number_type_helper(nsn, metadata) != UNKNOWN`` for one region's metadata.

    The library tries up to eleven descriptions one call at a time (general,
    then premium rate, toll free, ... mobile); a number is of a known type
    when it fits the general description and any one of the others. Here
    that is two regular expressions per length of number, the second the
    alternation of every description that allows the length.
    """

    metadata: PhoneMetadata
    by_length: dict[int, tuple[re.Pattern[str], re.Pattern[str]] | None]

    def has_known_type(self, nsn: str) -> bool:
        """Whether ``nsn`` (a national significant number) is valid in this region."""
        length = len(nsn)
        if length not in self.by_length:
            # Bounded: at most 17 lengths (phonenumbers' longest NSN).
            self.by_length[length] = self._compile(length)
        patterns = self.by_length[length]
        if patterns is None:
            return False
        general, types = patterns
        return general.fullmatch(nsn) is not None and types.fullmatch(nsn) is not None

    def _compile(self, length: int) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
        metadata = self.metadata
        general = _pattern(metadata.general_desc, length)
        descs = [
            metadata.premium_rate,
            metadata.toll_free,
            metadata.shared_cost,
            metadata.voip,
            metadata.personal_number,
            metadata.pager,
            metadata.uan,
            metadata.voicemail,
            metadata.fixed_line,
        ]
        # With the same pattern for both, the library never tries mobile.
        if not metadata.same_mobile_and_fixed_line_pattern:
            descs.append(metadata.mobile)
        types = [pattern for desc in descs if (pattern := _pattern(desc, length))]
        if general is None or not types:
            return None
        return re.compile(general), re.compile("|".join(f"(?:{p})" for p in types))


@dataclass(frozen=True)
class _Candidate:
    """A region sharing a calling code: how ``region_code_for_number`` picks it."""

    leading_digits: re.Pattern[str] | None
    selects_by_type: _Region | None
    validates: _Region | None  # None: is_valid_number_for_region says no outright


@dataclass(frozen=True)
class _CallingCode:
    """What parsing and validating need to know about one country calling code."""

    national_prefix: re.Pattern[str] | None
    candidates: tuple[_Candidate, ...]
    single: bool


@lru_cache(maxsize=1024)  # keyed by calling code: fewer than 1,000 exist
def _calling_code(code: int) -> _CallingCode | None:
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]
    # parse() strips a national prefix using the metadata of the main region.
    main = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
    if main is None:
        return None
    prefix = main.national_prefix_for_parsing
    candidates = []
    for region in regions:
        # region_code_for_number's choice among regions sharing the code ...
        listed = PhoneMetadata.metadata_for_region(region.upper(), None)
        if listed is None and len(regions) > 1:
            continue  # a region without metadata is never chosen
        leading = None
        by_type = None
        if listed is not None:
            if listed.leading_digits is not None:
                leading = re.compile(listed.leading_digits)
            else:
                by_type = _Region(listed, {})
        # ... and is_valid_number_for_region's verdict once it is chosen.
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region.upper())
        validates = None
        if metadata is not None and (
            region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY or metadata.country_code == code
        ):
            same = by_type is not None and by_type.metadata is metadata
            validates = by_type if same else _Region(metadata, {})
        candidates.append(_Candidate(leading, by_type, validates))
    return _CallingCode(
        national_prefix=re.compile(prefix) if prefix else None,
        candidates=tuple(candidates),
        single=len(regions) == 1,
    )


def _valid(code: _CallingCode, nsn: str) -> bool:
    # phonenumbers.is_valid_number: choose the region, then check the number there.
    chosen = None
    if code.single:
        chosen = code.candidates[0]
    else:
        for candidate in code.candidates:
            # A region with leading digits is chosen by them alone, without a
            # look at the number's type (region_code_for_number).
            if candidate.leading_digits is not None:
                picked = candidate.leading_digits.match(nsn) is not None
            else:
                by_type = candidate.selects_by_type
                picked = by_type is not None and by_type.has_known_type(nsn)
            if picked:
                chosen = candidate
                break
    if chosen is None or chosen.validates is None:
        return False
    return chosen.validates.has_known_type(nsn)


def phone_fast_path(number: str) -> str | None:
    """The E.164 form phonenumbers gives a valid ``+<digits>`` number, or ``None``.

    Answers ``format_number(parse(number, None), E164)`` when
    ``is_valid_number`` holds, for numbers already in E.164 form; ``None``
    means "ask phonenumbers" (anything else, or a number it would reject).
    """
    if not E164.fullmatch(number):
        return None
    digits = number[1:]
    # parse(): the calling code is the shortest prefix of 1-3 digits that is one.
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    rules = _calling_code(code)
    nsn = digits[size:]
    if rules is None or len(nsn) < 2:
        return None
    # A national prefix (e.g. the 0 of +44 07911...) that parse() may strip
    # changes the number: the library decides those.
    if rules.national_prefix is not None and rules.national_prefix.match(nsn):
        return None
    if not _valid(rules, nsn):
        return None
    # Nothing was stripped or rewritten: "+" + calling code + NSN is the input
    # (a leading zero of the NSN is kept as an Italian leading zero).
    return number
