"""Lifecycle policies: ordered rules read from a TOML file, and which rule a study falls under.

A policy is strict: an unknown key, a value of the wrong type, a missing action, a lossy rule with no
limit at all, or a negative number is refused with one error that names the rule (by position and name)
and the key, so a typo never silently widens what a rule does to an archive.

    [[rule]]
    name = "CR and DX older than a year"
    modality = ["CR", "DX"]      # matched against ModalitiesInStudy; omitted = any
    body_part = ["CHEST"]        # optional, BodyPartExamined of the study's series (case-insensitive)
    older_than_days = 365        # by StudyDate, else by the date the study was received
    not_accessed_days = 90       # optional: leave studies read recently alone
    action = "lossy"             # "lossy" or "tier"
    max_ratio = 10               # lossy: never above this ratio against the uncompressed pixel data
    min_psnr_db = 45             # lossy: never below this PSNR, per frame
    max_error = 20               # lossy: never a larger absolute error, in stored values, per frame
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

DAY = 86400.0
ACTIONS = ("lossy", "tier")
LIMITS = ("max_ratio", "min_psnr_db", "max_error")


class PolicyError(ValueError):
    """The policy file cannot be used; str() names the rule and the key."""


@dataclass(frozen=True)
class Rule:
    index: int  # 1-based position in the file
    name: str
    action: str
    modality: frozenset[str] | None = None
    body_part: frozenset[str] | None = None  # upper-cased
    older_than_days: float | None = None
    not_accessed_days: float | None = None
    max_ratio: float | None = None
    min_psnr_db: float | None = None
    max_error: int | None = None

    @property
    def label(self) -> str:
        return f"rule {self.index} ({self.name!r})"


@dataclass(frozen=True)
class Policy:
    name: str  # the file's name, never its path (it is shown over HTTP)
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class StudyFacts:
    """What rules are matched on, for one study."""

    study_uid: str
    modalities: frozenset[str]
    body_parts: frozenset[str]  # upper-cased
    study_date: str  # DA, may be empty or malformed
    first_received: float  # epoch seconds, earliest created_at of its instances
    accessed_at: float  # epoch seconds, 0 = never read


# key -> (accepted Python types, description for the error)
_NUMBER = ((int, float), "a number")
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "action": ((str,), "a string"),
    "modality": ((list,), "a list of strings"),
    "body_part": ((list,), "a list of strings"),
    "older_than_days": _NUMBER,
    "not_accessed_days": _NUMBER,
    "max_ratio": _NUMBER,
    "min_psnr_db": _NUMBER,
    "max_error": ((int,), "an integer"),
}


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file; PolicyError on anything wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file {path.name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"the policy file {path.name} is not UTF-8 text") from None
    return parse_policy(text, name=path.name)


def parse_policy(text: str, *, name: str = "policy") -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{name}: not valid TOML: {exc}") from None
    if unknown := sorted(set(doc) - {"rule"}):
        raise PolicyError(f"{name}: unknown top-level key {unknown[0]!r} (only [[rule]] tables)")
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise PolicyError(f"{name}: 'rule' must be an array of tables ([[rule]])")
    return Policy(name, tuple(_rule(i, t) for i, t in enumerate(tables, start=1)))


def _rule(index: int, table: dict[str, Any]) -> Rule:
    raw_name = table.get("name")
    label = f"rule {index}" + (f" ({raw_name!r})" if isinstance(raw_name, str) else "")

    def bad(key: str, why: str) -> PolicyError:
        return PolicyError(f"{label}: {key}: {why}")

    for key, value in table.items():
        if key not in _KEYS:
            raise bad(key, f"unknown key (known: {', '.join(sorted(_KEYS))})")
        types, what = _KEYS[key]
        # bool is an int to Python, never a number here.
        if isinstance(value, bool) or not isinstance(value, types):
            raise bad(key, f"must be {what}, not {type(value).__name__}")
        if isinstance(value, int | float) and value < 0:
            raise bad(key, "must not be negative")
        if isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value):
            raise bad(key, f"must be {what} (non-empty)")
    if "action" not in table:
        raise bad("action", 'missing (one of "lossy", "tier")')
    action = table["action"]
    if action not in ACTIONS:
        raise bad("action", f'must be "lossy" or "tier", not {action!r}')
    limits = [k for k in LIMITS if k in table]
    if action == "lossy" and not limits:
        raise bad("max_ratio", "a lossy rule needs at least one of max_ratio, min_psnr_db, max_error")
    if action == "tier" and limits:
        raise bad(limits[0], "only a lossy rule takes a fidelity limit")
    if "max_ratio" in table and table["max_ratio"] < 1:
        raise bad("max_ratio", "must be at least 1 (uncompressed)")

    def words(key: str) -> frozenset[str] | None:
        return frozenset(v.strip().upper() for v in table[key]) if key in table else None

    def number(key: str) -> float | None:
        return float(table[key]) if key in table else None

    return Rule(
        index=index,
        name=raw_name if isinstance(raw_name, str) else f"rule {index}",
        action=action,
        modality=words("modality"),
        body_part=words("body_part"),
        older_than_days=number("older_than_days"),
        not_accessed_days=number("not_accessed_days"),
        max_ratio=number("max_ratio"),
        min_psnr_db=number("min_psnr_db"),
        max_error=int(table["max_error"]) if "max_error" in table else None,
    )


def study_age_start(facts: StudyFacts) -> float:
    """When the study began, for older_than_days: its StudyDate (midnight UTC), else when it was first
    received."""
    text = facts.study_date.strip()
    if len(text) >= 8 and text[:8].isdigit():
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            pass
        else:
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return facts.first_received


def matches(rule: Rule, facts: StudyFacts, now: float, *, ignore_study_date: bool = False) -> bool:
    """Whether `rule` applies to the study. With `ignore_study_date` (benchmarks of old corpora, whose
    studies are all decades old, or none), ages are not considered at all."""
    if rule.modality is not None and not (rule.modality & facts.modalities):
        return False
    if rule.body_part is not None and not (rule.body_part & facts.body_parts):
        return False
    too_young = rule.older_than_days is not None and now - study_age_start(facts) < rule.older_than_days * DAY
    if too_young and not ignore_study_date:
        return False
    # accessed_at 0 = never read: counts as not accessed.
    read_lately = (
        rule.not_accessed_days is not None
        and facts.accessed_at > 0
        and now - facts.accessed_at < rule.not_accessed_days * DAY
    )
    return not read_lately


def first_match(
    policy: Policy, facts: StudyFacts, now: float, *, ignore_study_date: bool = False
) -> Rule | None:
    """The first rule of the policy that applies to the study: only that one is carried out."""
    for rule in policy.rules:
        if matches(rule, facts, now, ignore_study_date=ignore_study_date):
            return rule
    return None
