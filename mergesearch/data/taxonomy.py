"""The harm taxonomy: BeaverTails' 14 categories, each mapped to Llama Guard 3 hazard codes.

Kept as data so generators, judges and reports agree on one list. The first code of each mapping is the
primary one (what a guard model is expected to name); the rest are codes that also apply.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_GUARD_3_CODES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}


@dataclass(frozen=True)
class HarmCategory:
    name: str  # BeaverTails' category name
    llama_guard_codes: tuple[str, ...]

    @property
    def primary_code(self) -> str:
        return self.llama_guard_codes[0]


HARM_CATEGORIES: tuple[HarmCategory, ...] = (
    HarmCategory("animal_abuse", ("S1",)),
    HarmCategory("child_abuse", ("S1", "S4")),
    HarmCategory("controversial_topics,politics", ("S13", "S5")),
    HarmCategory("discrimination,stereotype,injustice", ("S10",)),
    HarmCategory("drug_abuse,weapons,banned_substance", ("S2", "S9")),
    HarmCategory("financial_crime,property_crime,theft", ("S2",)),
    HarmCategory("hate_speech,offensive_language", ("S10",)),
    HarmCategory("misinformation_regarding_ethics,laws_and_safety", ("S6", "S5")),
    HarmCategory("non_violent_unethical_behavior", ("S2",)),
    HarmCategory("privacy_violation", ("S7",)),
    HarmCategory("self_harm", ("S11",)),
    HarmCategory("sexually_explicit,adult_content", ("S12",)),
    HarmCategory("terrorism,organized_crime", ("S1", "S9")),
    HarmCategory("violence,aiding_and_abetting,incitement", ("S1",)),
)

CATEGORY_BY_NAME: dict[str, HarmCategory] = {c.name: c for c in HARM_CATEGORIES}


def check_category(name: str) -> HarmCategory:
    """The category called ``name``; an unknown name raises with the closest known ones."""
    import difflib

    from mergesearch.errors import UserError

    if name in CATEGORY_BY_NAME:
        return CATEGORY_BY_NAME[name]
    close = difflib.get_close_matches(name, list(CATEGORY_BY_NAME), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(CATEGORY_BY_NAME)})"
    raise UserError(f"unknown harm category {name!r}{hint}")
