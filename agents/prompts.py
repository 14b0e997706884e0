"""Load the agents' prompt templates from `prompts/<name>.md` and fill their named `${placeholders}`."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from string import Template

from tools.errors import ConfigurationError

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """Return the raw template `prompts/<name>.md`."""
    path = PROMPTS_DIR / f"{name}.md"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.md") if p.stem != "README")
        raise ConfigurationError(
            f"no prompt named {name!r} in {PROMPTS_DIR}", hint=f"known: {', '.join(known)}"
        )
    return path.read_text()


def placeholders(name: str) -> set[str]:
    """The named placeholders a template uses."""
    return set(_PLACEHOLDER.findall(load_prompt(name)))


def render_prompt(name: str, **values: str) -> str:
    """Fill every placeholder of `prompts/<name>.md`; a missing or unknown value is a configuration error."""
    wanted = placeholders(name)
    missing, extra = wanted - values.keys(), values.keys() - wanted
    if missing or extra:
        raise ConfigurationError(
            f"prompt {name!r} takes {sorted(wanted)}; missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    return Template(load_prompt(name)).substitute(values)
