"""Finding and reading profiles: the search path of policies/*.toml files, first match wins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.profile import Profile
from ..core.profile_format import parse_profile
from ..errors import UserError
from .files import read_text

CHECKOUT_POLICIES = Path(__file__).resolve().parents[2] / "policies"
INSTALLED_POLICIES = Path(sys.prefix) / "share" / "port25-enforcer" / "policies"


def policy_dirs() -> list[Path]:
    """Where profiles are looked for, first match wins: $ENFORCER_POLICIES, /etc, the checkout, the install."""
    dirs = []
    if os.environ.get("ENFORCER_POLICIES"):
        dirs.append(Path(os.environ["ENFORCER_POLICIES"]))
    dirs += [Path("/etc/enforcer/policies"), CHECKOUT_POLICIES, INSTALLED_POLICIES]
    return dirs


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in policy_dirs():
        for f in sorted(d.glob("*.toml")) if d.is_dir() else []:
            found.setdefault(f.stem, f)
    return found


def load_profile_file(path: Path) -> Profile:
    text = read_text(str(path), "the profile")
    try:
        profile = parse_profile(text, str(path))
    except RecursionError:  # tomllib recurses once per nested array or table
        raise UserError(f"{path}: nested too deeply to read; a profile nests tables two levels deep") from None
    if profile.id != path.stem:
        raise UserError(f"{path}: profile.id: '{profile.id}' differs from the file name; "
                        f"set id = \"{path.stem}\" or rename the file")
    return profile


def load_profile(profile_id: str) -> Profile:
    found = available_profiles()
    if profile_id not in found:
        choices = ", ".join(found) or "none found"
        raise UserError(f"no policy profile '{profile_id}' (looked in {', '.join(map(str, policy_dirs()))}); "
                        f"use one of: {choices}")
    return load_profile_file(found[profile_id])
