"""The lexicon of goal text: quantities with their units and comparators, target names, and criterion words.

`read_statements` turns one message into typed statements (a size limit, a speed-up, a tolerated accuracy
drop) without judging them; `agents.intake` merges them into criteria, fills defaults and asks questions.
Sizes are in bytes (KB/MB/GB decimal, KiB/MiB/GiB binary), latencies in ms (a rate in Hz or fps: 1000/rate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from tools.evaluation.targets import THIS_MACHINE, known_targets
from tools.evaluation.types import AccuracyLevel

Bound = Literal["max", "min"]
Metric = tuple[AccuracyLevel, str, bool]
"""(level, metric, higher_is_better) of an accuracy figure."""

_THIS_MACHINE_WORDS = ("this machine", "this computer", "this pc", "this box", "my machine", "my computer")
_THIS_MACHINE_EXTRA = ("this-machine", "localhost", "locally", "my pc")
_BRANDS = (
    r"jetson|xavier|orin|raspberry|rpi\d*|coral|edge ?tpu|snapdragon|qualcomm|hailo[\w-]*|rk\d{3,}|rockchip"
    r"|iphone|android|pixel \d+|macbook|mac mini|apple m\d|nuc|rtx ?\d*|gtx ?\d*|geforce|[ahlt]\d{1,3}0? gpu"
    r"|a100|h100|h200|tx[12]|arduino|stm32|esp32|intel|amd|ryzen"
)
_BLANK = "¦"
"""Stands in for a target's words, so numbers on either side of a target name never join ('50 Orin s')."""
_MODEL_WORDS = r"edge|nano|nx|agx|super|pro|max|mini|ultra|orin|xavier|tpu|dev|kit|module"
_DEVICE_WORDS = r"gpu|cpu|npu|tpu|mcu|microcontroller|phone|smartphone|tablet|board"
_UNITS = {
    "size": r"[kmgt]ib|[kmgt]b|(?:kilo|mega|giga|tera|kibi|mebi|gibi|tebi)bytes?|bytes?",
    "latency": r"ms|msecs?|millis(?:econds?)?|milliseconds?|us|usecs?|microseconds?|s|secs?|seconds?",
    "rate": r"khz|hz|fps",
    "points": r"percentage[ -]points?|pp|points?|pts?",
    "percent": r"%|percent|per cent",
    "ratio": r"x|times|fold",
}
_NUMBER = r"(?<![^\s<>=~(:≤≥])(?P<sign>-)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_QUANTITY = re.compile(
    _NUMBER
    + r"(?:\s*-?\s*(?:"
    + "|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _UNITS.items())
    + r")(?![a-z0-9]))?"
)
_NEGATED = r"(?:no|not|never|without|cannot|\w*n't)\s+(?:\w+\s+){0,2}?"
_COMPARATOR = re.compile(
    r"(?<![a-z])(?:(?P<max>"
    + _NEGATED
    + r"(?:exceed\w*|going over|more than|over|above|larger than|bigger than|higher than|greater than"
    r"|slower than|longer than)|at most|less than|lower than|fewer than|smaller than|faster than|shorter than"
    r"|under|below|within|up to|max(?:imum|imal)?(?: of)?|<=|=<|<|≤|limit(?:ed)? (?:of|to)"
    r"|cap(?:ped)? (?:at|to)"
    r"|fits? (?:in|into|within)|fitting (?:in|into|within)|budget of)"
    r"|(?P<min>"
    + _NEGATED
    + r"(?:less than|lower than|fewer than|below|under|smaller than|worse than)|at least|more than"
    r"|greater than|higher than|better than|over|above|exceed\w*|min(?:imum|imal)?(?: of)?|>=|=>|>|≥))"
    r"(?![a-z])"
)
_AFTER_MAX = re.compile(r"^\s*(?:or (?:less|lower|below|under|smaller|faster|fewer)|max\b|at most|tops\b)")
_AFTER_MIN = re.compile(r"^\s*(?:or (?:more|higher|above|greater|larger)|min\b|at least|\+)")
_MEMORY_WORDS = re.compile(r"\b(?:memory|ram|rss|vram|dram|fits?|fitting)\b")
_SIZE_WORDS = re.compile(r"\b(?:size|disk|storage|file|artifact|flash|download|weights|checkpoint)\b")
_COMPRESS_AFTER = re.compile(
    r"^\s*(?:smaller|less (?:storage|disk|space)|compress\w*|size reduction|reduction in size|lighter|tinier)"
)
_COMPRESS_BEFORE = re.compile(
    r"(?:compress\w*|compression(?: ratio)?|shrink\w*|smaller"
    r"|(?:reduc\w*|cut\w*)(?: \w+){0,3}? (?:size|storage))$"
)
_SPEED_AFTER = re.compile(r"^\s*(?:faster|quicker|speed-?\s?up|lower latency|less latency|acceleration)")
_SPEED_BEFORE = re.compile(r"(?:faster|quicker|speed\s*(?:it\s*)?up|speed-?up|accelerat\w*)$")
_LATENCY_CUT_BEFORE = re.compile(r"(?:reduc\w*|cut\w*|lower\w*)(?: \w+){0,3}? latency$")
_FILLER = re.compile(
    r"(?:\s|\b(?:by|of|to|a|an|factor|about|around|roughly|approximately|it|the|model|at least)\b|~)*$"
)
_SLOW = re.compile(r"^\s*slower|slow(?:er|down| down)$")
_OF_SIZE = re.compile(r"^\s*of (?:the )?(?:original |baseline |current )?(?:model )?(?:size|storage)")
_OF_LATENCY = re.compile(r"^\s*of (?:the )?(?:original |baseline |current )?latency")
_OF_ACCURACY = re.compile(
    r"^\s*of (?:the |its )?(?:original |baseline |current )?"
    r"(?:accuracy|success rate|performance|quality|fidelity)"
)
_COUNT_NOUN = re.compile(
    r"^\s*(?:episodes?|trials?|samples?|steps?|rollouts?|runs?|images?|frames?|tasks?|seeds?|batch\w*|tokens?"
    r"|layers?|param\w*|billion|million|[bmk]\b)"
)
_RETAIN = re.compile(r"\b(?:keep|keeps|retain\w*|preserv\w*|maintain\w*)\b")
DROP_WORDS = re.compile(
    r"\b(?:los[et]s?|losing|loss|drop\w*|degrad\w*|decreas\w*|reduc\w*|worse|within|regress\w*|sacrific\w*"
    r"|give up|penalty|hit|deviat\w*)\b|of (?:the )?(?:original|baseline)"
)
_METRICS: tuple[tuple[str, Metric], ...] = (
    (r"token[ _]accuracy", ("task", "token_accuracy", True)),
    (r"classification accuracy|top-?1(?: accuracy)?", ("task", "accuracy", True)),
    (r"success(?:[ -]rate)?|closed[- ]loop|task completion", ("closed_loop", "success_rate", True)),
    (r"cosine|fidelity|similarity", ("fidelity", "min_cosine", True)),
    (r"action[ _](?:mse|error)|\bmse\b|mean squared error", ("task", "action_mse", False)),
)
_GENERIC_ACCURACY = re.compile(r"\baccura\w*|\bquality\b")
_LOSSLESS = re.compile(
    r"\blossless\b|\bno (?:accuracy|quality) (?:loss|drop)|\bno loss (?:of|in) (?:accuracy|quality)"
    r"|without (?:any )?(?:losing (?:any )?(?:accuracy|quality)|(?:accuracy|quality) loss)"
    r"|(?:keep|same|identical) (?:the )?(?:exact )?same accuracy"
)
FASTEST = re.compile(
    r"as fast as possible|\bfastest\b|as quick(?:ly)? as possible|\bquickest\b|maximi[sz]e (?:the )?speed"
    r"|minimi[sz]e (?:the )?latency|lowest (?:possible )?latency|as low (?:a )?latency as possible"
)
SMALLEST = re.compile(
    r"as small as possible|\bsmallest\b|as compact as possible|\btiniest\b"
    r"|minimi[sz]e (?:the )?(?:model )?size"
    r"|as light as possible|\blightest\b"
)
STOP_AT_FIRST = re.compile(
    r"\bgood enough\b|\bstop at (?:the )?first\b|\bfirst (?:version|model|one) that (?:meets|passes|reaches)"
    r"|\bno need to (?:search|look) (?:further|for better)\b|\bdon'?t (?:search|look) (?:further|for (?:a )?better)"
)
"""The user asks to stop once every criterion passes, without searching for a better version."""
FASTER = re.compile(
    r"\bfaster\b|\bquicker\b|speed\s*(?:it\s*)?up|\bspeedup\b|\baccelerat\w*|(?:reduce|lower) latency"
)
SMALLER = re.compile(r"\bsmaller\b|\bcompress\w*|\bshrink\w*|reduce (?:the )?(?:model )?size|\blighter\b")
SLOWER = re.compile(r"\bslower\b")
_NOT_SLOWER = re.compile(r"\b(?:no|not|never|\w*n't)\s+(?:be\s+)?slower than\b")
CRITERION_WORDS = {
    "size": r"\bsize\b|\d\s*-?\s*(?:[kmgt]i?b|bytes?|(?:kilo|mega|giga|tera)bytes?)\b|\bsmall\w*"
    r"|\bcompress\w*|\bshrink\w*|\bstorage\b|\bdisk\b|\bfootprint\b|\bmb\b|\bgb\b",
    "latency": r"latency|\d\s*(?:ms|msecs?|millis\w*|us|s|secs?|seconds?|hz|khz|fps)\b|real[- ]?time"
    r"|\bfast\w*|\bspeed\w*|inference time|response time|control (?:loop|rate|frequency)",
    "memory": r"\bmemory\b|\bram\b|\brss\b|\bvram\b|\bdram\b|\bfits?\b|\bfitting\b|\bfootprint\b",
    "speed": r"\bfaster\b|\bspeed\w*|\bquick\w*|\bslower\b|\baccelerat\w*|latency",
    "compression": r"\bsmaller\b|\bcompress\w*|\bshrink\w*|\bsize\b|\breduc\w*|\blighter\b",
    "accuracy": r"accura\w*|quality|success|cosine|fidelity|similarity|\bmse\b|error|los[est]|losing|drop"
    r"|degrad\w*|within|points?\b|\d\s*%|percent",
}


@dataclass(frozen=True)
class TargetMention:
    """A target named in the text: its canonical name (None when unknown) and the words as written."""

    canonical: str | None
    phrase: str
    start: int


@dataclass(frozen=True)
class Statement:
    """One thing the text asks for, in canonical units, before any merging or judging.

    kind: 'size' / 'memory' (bytes), 'latency' (ms), 'compression' / 'speedup' (ratio), 'floor' (metric
    units), 'drop' (in `unit`). `bound` is 'max' or 'min'; `metric` is None when the text names none.
    """

    kind: Literal["size", "memory", "latency", "compression", "speedup", "floor", "drop"]
    value: float
    bound: Bound
    raw: str
    unit: Literal["absolute", "relative_pct"] = "absolute"
    metric: Metric | None = None
    clause: int = 0


def normalize(text: str) -> str:
    """Lower-case and map look-alike characters to ASCII, keeping every position (one character for one)."""
    table = str.maketrans(
        {"×": "x", "µ": "u", "μ": "u", "−": "-", "–": "-", "—": "-", "\u00a0": " ", "’": "'"}
    )
    return text.lower().translate(table)


def _phrase_pattern(phrase: str) -> str:
    """A regex for a target phrase: optional 'nvidia'/'jetson', words split at letter-digit edges."""
    words = re.sub(r"\b(?:nvidia|jetson)\b", " ", phrase.lower())
    tokens = re.findall(r"[a-z]+|\d+", words)
    return r"(?:nvidia[\s_-]*)?(?:jetson[\s_-]*)?" + r"[\s_-]*".join(re.escape(t) for t in tokens)


@lru_cache(maxsize=1)
def _target_regex() -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation over every target phrase, longest first, and the canonical name of each group."""
    phrases: dict[str, str] = {p: THIS_MACHINE for p in _THIS_MACHINE_WORDS + _THIS_MACHINE_EXTRA}
    for name, profile in known_targets().items():
        display = re.sub(r"\s*\(.*?\)", "", profile.display_name)
        for phrase in (name.replace("-", " "), display, *profile.aliases):
            phrases[phrase.lower()] = name
    ordered = sorted(phrases, key=lambda p: -len(_phrase_pattern(p)))
    groups = {f"t{i}": phrases[p] for i, p in enumerate(ordered)}
    body = "|".join(f"(?P<t{i}>{_phrase_pattern(p)})" for i, p in enumerate(ordered))
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?![a-z0-9])"), groups


def find_targets(text: str) -> tuple[list[TargetMention], str]:
    """Return the targets named in normalized `text`, known or not, and the text with their words blanked."""
    pattern, groups = _target_regex()
    found: list[TargetMention] = []
    blanked = list(text)
    for match in pattern.finditer(text):
        found.append(TargetMention(groups[match.lastgroup or ""], match.group(0).strip(), match.start()))
        blanked[match.start() : match.end()] = _BLANK * (match.end() - match.start())
    text = "".join(blanked)
    unknown = re.compile(
        rf"(?<![a-z0-9])(?:{_BRANDS})(?![a-z])|\bon\s+(?:an?\s+|the\s+|my\s+|our\s+)?(?:\w+\s+){{0,2}}?"
        rf"(?:{_DEVICE_WORDS})\b"
    )
    consumed = 0
    for match in unknown.finditer(text):
        start = match.start()
        if start < consumed:
            continue
        if text[start:].startswith("on "):
            start = start + 3 + len(re.match(r"\s*(?:(?:an?|the|my|our)\s+)?", text[start + 3 :]).group(0))
        end = start
        for token in re.finditer(r"[a-z0-9][\w.+-]*", text[start:]):
            word = token.group(0)
            if token.start() > end - start + 1 or not (
                re.fullmatch(_BRANDS + "|" + _DEVICE_WORDS + "|" + _MODEL_WORDS, word)
                or re.search(r"\d", word)
                or end == start
            ):
                break
            end = start + token.end()
        consumed = max(end, match.end())
        if end > start:
            found.append(TargetMention(None, text[start:end], start))
            text = text[:start] + _BLANK * (end - start) + text[end:]
    return sorted(found, key=lambda m: m.start), text


def find_metric(text: str) -> Metric | None:
    """The accuracy metric a piece of text names ('success rate', 'cosine', 'mse'), or None."""
    for pattern, metric in _METRICS:
        if re.search(pattern, text):
            return metric
    return None


def names_accuracy(text: str) -> bool:
    """True when the text speaks of accuracy at all (a named metric, 'accuracy', 'quality')."""
    return find_metric(text) is not None or bool(_GENERIC_ACCURACY.search(text))


def asks_lossless(text: str) -> bool:
    """True when the text asks for no accuracy loss at all."""
    return bool(_LOSSLESS.search(text))


def asks_faster_and_slower(text: str) -> bool:
    """True when one goal asks for more speed and also for (or accepts) being slower."""
    return bool(FASTER.search(text)) and bool(SLOWER.search(_NOT_SLOWER.sub(" ", text)))


def split_clauses(text: str) -> list[str]:
    """Split at commas, semicolons, sentence ends and the conjunctions that join separate demands."""
    return [
        c for c in re.split(r"[,;]\s+|\.\s+|[!?\n]+|\s+(?:and|but|while|then|plus)\s+", text) if c.strip()
    ]


def _bound(before: str, after: str) -> Bound | None:
    """The comparator nearest to a number: after it ('50 MB or less') first, else the last one before it."""
    if _AFTER_MAX.search(after):
        return "max"
    if _AFTER_MIN.search(after):
        return "min"
    found = list(_COMPARATOR.finditer(before))
    if not found:
        return None
    return "max" if found[-1].group("max") else "min"


def _tail(before: str) -> str:
    """The words right before a number, less comparator and fillers ('speed it up by at least' -> ...up)."""
    found = list(_COMPARATOR.finditer(before))
    if found and not before[found[-1].end() :].strip():
        before = before[: found[-1].start()]
    return _FILLER.sub("", before)


def _bytes(unit: str) -> float:
    """Bytes in one `unit`: 'mb' is 10^6 (decimal), 'mib' 2^20 (binary)."""
    if unit.startswith("byte"):
        return 1.0
    power = "kmgt".index(unit[0]) + 1
    binary = unit[1:2] == "i" or unit[2:4] == "bi"
    return float(1024**power if binary else 1000**power)


def _ms(unit: str) -> float:
    """Milliseconds in one latency `unit`."""
    if unit.startswith("m"):
        return 1.0
    return 1e-3 if unit.startswith("u") or unit.startswith("micro") else 1000.0


def read_statements(text: str) -> list[Statement]:
    """Read every quantity of normalized, target-blanked `text` as a typed statement, in reading order."""
    out: list[Statement] = []
    for index, clause in enumerate(split_clauses(text)):
        matches = list(_QUANTITY.finditer(clause))
        for i, match in enumerate(matches):
            before = clause[matches[i - 1].end() if i else 0 : match.start()]
            after = clause[match.end() : matches[i + 1].start() if i + 1 < len(matches) else len(clause)]
            statement = _read_quantity(match, before, after, clause, index)
            if statement is not None:
                out.append(statement)
    return out


def _read_quantity(
    match: re.Match[str], before: str, after: str, clause: str, index: int
) -> Statement | None:
    """Type one number by its unit and the words around it; None when it says nothing we can use."""
    value = float(match.group("num").replace(",", "")) * (-1 if match.group("sign") else 1)
    raw, bound = match.group(0).strip(), _bound(before, after)
    unit = next((k for k in _UNITS if match.group(k)), None)
    near = before + " " + after
    if unit == "size":
        kind = "memory" if _MEMORY_WORDS.search(near) and not _SIZE_WORDS.search(near) else "size"
        return Statement(kind, value * _bytes(match.group("size")), bound or "max", raw, clause=index)
    if unit == "latency":
        return Statement("latency", value * _ms(match.group("latency")), bound or "max", raw, clause=index)
    if unit == "rate":
        hz = value * (1000 if match.group("rate") == "khz" else 1)
        flipped: Bound = "max" if bound in (None, "min") else "min"
        return Statement("latency", 1000 / hz if hz > 0 else hz, flipped, raw, clause=index)
    if unit == "ratio":
        return _read_ratio(value, bound, before, after, raw, index)
    if unit == "percent":
        return _read_percent(value, bound, before, after, clause, raw, index)
    metric = find_metric(clause)
    if unit == "points":
        return Statement("drop", value / 100, "max", raw, metric=metric, clause=index)
    if (metric is None and not _GENERIC_ACCURACY.search(clause)) or _COUNT_NOUN.search(after):
        return None
    if DROP_WORDS.search(near):
        return Statement("drop", value, "max", raw, metric=metric, clause=index)
    if bound is None:
        return None
    rate_like = metric is None or metric[1] != "action_mse"
    return Statement(
        "floor",
        value / 100 if rate_like and 1 < value <= 100 else value,
        bound,
        raw,
        "absolute",
        metric,
        index,
    )


def _read_ratio(
    value: float, bound: Bound | None, before: str, after: str, raw: str, index: int
) -> Statement | None:
    """'4x smaller', 'compress 4x': compression; '3x faster': speed-up; 'at most 2x slower': speed-up 1/2."""
    tail = _tail(before)
    if _COMPRESS_AFTER.search(after) or (not _SPEED_AFTER.search(after) and _COMPRESS_BEFORE.search(tail)):
        return Statement("compression", value, bound or "min", raw, clause=index)
    if _SPEED_AFTER.search(after) or _SPEED_BEFORE.search(tail) or _LATENCY_CUT_BEFORE.search(tail):
        return Statement("speedup", value, bound or "min", raw, clause=index)
    if _SLOW.search(after) or _SLOW.search(tail):
        return Statement("speedup", 1 / value if value > 0 else value, "min", raw, clause=index)
    return None


def _read_percent(
    value: float, bound: Bound | None, before: str, after: str, clause: str, raw: str, index: int
) -> Statement | None:
    """A percentage: '75% smaller', '50% faster', '30% of the original size', else an accuracy figure."""
    share, tail = 1 - value / 100, _tail(before)
    if _OF_SIZE.search(after):
        return Statement("compression", 100 / value if value > 0 else value, "min", raw, clause=index)
    if _OF_LATENCY.search(after):
        return Statement("speedup", 100 / value if value > 0 else value, "min", raw, clause=index)
    if _COMPRESS_AFTER.search(after) or _COMPRESS_BEFORE.search(tail):
        return Statement("compression", 1 / share if share > 0 else 0.0, "min", raw, clause=index)
    if _LATENCY_CUT_BEFORE.search(tail):
        return Statement("speedup", 1 / share if share > 0 else 0.0, "min", raw, clause=index)
    if _SPEED_AFTER.search(after) or _SPEED_BEFORE.search(tail):
        return Statement("speedup", 1 + value / 100, "min", raw, clause=index)
    if _SLOW.search(after):
        return Statement("speedup", 1 / (1 + value / 100), "min", raw, clause=index)
    metric = find_metric(clause)
    if _OF_ACCURACY.search(after) and (bound == "min" or _RETAIN.search(before)):
        return Statement("drop", 100 - value, "max", raw, "relative_pct", metric, index)
    wanted: Bound = "min" if metric is None or metric[2] else "max"
    named = metric is not None or bool(_GENERIC_ACCURACY.search(clause))
    near = before + " " + after
    if DROP_WORDS.search(near) or not named or bound not in (wanted, None) or (bound is None and value < 50):
        return Statement("drop", value, "max", raw, "relative_pct", metric, index)
    return Statement("floor", value / 100, wanted, raw, "absolute", metric, index)


def criterion_words(text: str) -> set[str]:
    """Which criterion kinds normalized `text` speaks of (size, latency, memory, speed, ...)."""
    kinds = {kind for kind, pattern in CRITERION_WORDS.items() if re.search(pattern, text)}
    return kinds | ({"accuracy"} if names_accuracy(text) else set())
