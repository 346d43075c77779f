"""`enforcer profile ...`: the policy profiles, each rule with its source; and the README's table of providers,
generated from the profiles so that it cannot drift from them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..core.profile import (CHANGE_WORDS, EXEMPTION_WORDS, Exemption, Profile, Provenance, exemption_conditions,
                            exemption_words)
from ..errors import UserError
from ..state.files import read_text
from ..state.profiles import available_profiles, load_profile_file
from .context import Context, json_option, pass_ctx
from .output import emit_json, show_table

README_START = "<!-- providers:start (generated: enforcer profile table --markdown) -->"
README_END = "<!-- providers:end -->"


class _ProfileGroup(click.Group):
    """`enforcer profile NAME` still shows NAME, as it did before the subcommands."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


@click.group(cls=_ProfileGroup, invoke_without_command=True)
@json_option
@click.pass_context
def profile(ctx: click.Context, as_json: bool) -> None:
    """The policy profiles: `profile list`, `profile show NAME`, `profile table --markdown`."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json:  # the files found, by id, as this command printed before it had subcommands
        return emit_json({k: str(v) for k, v in available_profiles().items()})
    _show_list(_loaded())


@profile.command("list")
@json_option
def profile_list(as_json: bool) -> None:
    """Every profile: ports, the provider's word for an account, exemption path, when a change applies."""
    profiles = _loaded()
    if as_json:
        return emit_json([profile_doc(p) for p in profiles])
    _show_list(profiles)


@profile.command("show")
@click.argument("profile_id", metavar="NAME")
@json_option
@pass_ctx
def profile_show(c: Context, profile_id: str, as_json: bool) -> None:
    """One profile: every rule with its source (URL, date read, documented or user-reported), the ports, the
    destinations never judged, the exemption path in the provider's words, when a change applies."""
    p = c.profile(profile_id)
    if as_json:
        return emit_json(profile_doc(p))
    click.echo(f"{p.name} ({p.id}), from {p.source}")
    facts = [
        ("account word", p.account_word),
        ("ports blocked", ", ".join(map(str, sorted(p.restricted_ports)))),
        ("never restricted", ", ".join(map(str, sorted(p.never_restricted_ports))) or "-"),
        ("never judged", "; ".join(_never_judged_words(p))),
        ("exemption", exemption_words(p)),
        ("change applies", CHANGE_WORDS[p.change_applies] + _decision(p.change_provenance)),
        ("advice", p.advice),
    ]
    for key, value in facts:
        click.echo(f"{key:17} {value}")
    click.echo("")
    click.echo("rules, each with its source:")
    for rule in p.rules():
        click.echo(f"  {rule.id}: {rule.says}")
        click.echo(f"      {_source_line(rule.provenance, p)}")
        if rule.provenance.decision:
            click.echo(f"      lab decision: {rule.provenance.decision}")
    click.echo("")
    show_table(f"{p.name}: {p.account_word} types", ["type", "name", "aliases", p.ports_phrase, "exemption"],
               [[t.id, t.name, ", ".join(t.aliases) or "-", _blocked_words(t.blocked_by_default, t.created_from,
                                                                            t.when_flagged), t.exemption]
                for t in p.types.values()])
    show_table("resource kinds", ["kind", "name", p.ports_phrase],
               [[k.id, k.name, f"follows its {p.account_word}" if k.follows_subscription else "never"]
                for k in p.kinds.values()])
    from ..lab.files import every_lab
    if p.id in every_lab():
        click.echo(f"see it for real (root): enforcer lab demo --profile {p.id}; before sending from a VM there: "
                   f"enforcer probe --preflight YOUR-RELAY-OR-MX --profile {p.id}")


@profile.command("table")
@click.option("--markdown", is_flag=True, help="Print the Markdown table of the README's providers section.")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown table into this README, between its providers markers.")
def profile_table(markdown: bool, readme: Path | None) -> None:
    """The table of providers: ports, who is blocked, exemption path, when a change applies, source."""
    profiles = _loaded()
    if readme is not None:
        readme.write_text(readme_section(read_text(str(readme), "the README"), providers_markdown(profiles)))
        click.echo(f"wrote the providers table of {len(profiles)} profiles into {readme}")
        return
    if markdown:
        click.echo(providers_markdown(profiles), nl=False)
        return
    show_table("Providers", list(TABLE_COLUMNS), [list(_table_row(p, links=False)) for p in profiles])


# ---------------------------------------------------------------- what the commands print


def _loaded() -> list[Profile]:
    return [load_profile_file(path) for path in available_profiles().values()]


def _show_list(profiles: list[Profile]) -> None:
    show_table("Profiles", ["id", "name", "ports", "account", "exemption path", "change applies"],
               [[p.id, p.name, ", ".join(map(str, sorted(p.restricted_ports))), p.account_word, exemption_words(p),
                 p.change_applies.value] for p in profiles])


def _decision(provenance: Provenance) -> str:
    return f" (lab decision: {provenance.decision})" if provenance.decision else ""


def _source_line(provenance: Provenance, p: Profile) -> str:
    s = provenance.source
    if s is None:
        return "source: none recorded in this profile"
    return f"source: {s.url} (read {s.read}, {provenance.status})"


def _never_judged_words(p: Profile) -> list[str]:
    return [f"{n.name} ({'its own networks' if n.own_network else ', '.join(n.prefixes)})" for n in p.never_judged]


def _blocked_words(blocked: bool, created_from: str | None, when_flagged: bool) -> str:
    if not blocked:
        return "allowed"
    if created_from:
        return f"blocked if created on or after {created_from}"
    return "blocked while flagged for spam" if when_flagged else "blocked"


def profile_doc(p: Profile) -> dict[str, Any]:
    """What --json prints of a profile: its types and kinds (as before), and every rule with its source."""
    return {"id": p.id, "name": p.name, "path": p.source, "account": p.account_word,
            "restricted_ports": sorted(p.restricted_ports), "never_restricted_ports": sorted(p.never_restricted_ports),
            "never_judged": [asdict(n) for n in p.never_judged], "advice": p.advice,
            "exemption": {**asdict(p.exemption_path), "words": exemption_words(p)},
            "change_applies": p.change_applies.value,
            "rules": [{"id": r.id, "says": r.says, "status": r.provenance.status,
                       "source": asdict(r.provenance.source) if r.provenance.source else None,
                       "decision": r.provenance.decision} for r in p.rules()],
            "types": {k: asdict(t) for k, t in p.types.items()},
            "kinds": {k: asdict(v) for k, v in p.kinds.items()}}


# ---------------------------------------------------------------- the README's table of providers

TABLE_COLUMNS = ("profile", "ports blocked", "never restricted", "who is blocked", "exemption path",
                 "a change applies", "source")


def _who(p: Profile) -> str:
    """Who is blocked, over the profile's types: every account, accounts created from a day on, flagged ones."""
    acct = p.account_word
    allowed = [t.name for t in p.types.values() if not t.blocked_by_default]
    if allowed:
        return f"every {acct} type but {', '.join(allowed)}"
    conditions = {(t.created_from, t.when_flagged) for t in p.types.values()}
    if len(conditions) > 1:
        return "; ".join(f"{t.name}: {_blocked_words(True, t.created_from, t.when_flagged)}" for t in p.types.values())
    created_from, when_flagged = conditions.pop()
    if created_from:
        return f"{p.accounts_word} created on or after {created_from}"
    return f"{p.accounts_word} flagged for spam" if when_flagged else f"every {acct}"


def _exemption_cell(p: Profile) -> str:
    if p.exemption_path.path:
        never = [t.name for t in p.types.values() if t.blocked_by_default and t.exemption == Exemption.NEVER]
        others = [t for t in p.types.values() if t.blocked_by_default and t.exemption != Exemption.NEVER]
        return p.exemption_path.path + exemption_conditions(p) + (f"; never for {', '.join(never)}"
                                                                  if never and others else "")
    kinds: dict[Exemption, list[str]] = {}
    for t in p.types.values():
        if t.blocked_by_default:
            kinds.setdefault(t.exemption, []).append(t.id)
    if len(kinds) == 1:
        return EXEMPTION_WORDS[next(iter(kinds))]
    return "; ".join(f"{EXEMPTION_WORDS[k]} ({', '.join(ids)})" for k, ids in kinds.items())


def _status_note(provenance: Provenance) -> str:
    return f" ({provenance.status})" if provenance.source else ""


def _table_row(p: Profile, links: bool) -> tuple[str, ...]:
    s = p.ports_provenance.source
    source = "-" if s is None else (f"[{s.status}]({s.url}), read {s.read}" if links else f"{s.url} ({s.status})")
    return (f"`{p.id}` {p.name}", ", ".join(map(str, sorted(p.restricted_ports))),
            ", ".join(map(str, sorted(p.never_restricted_ports))) or "-", _who(p),
            _exemption_cell(p) + _status_note(p.exemption_path.provenance),
            p.change_applies.value + _status_note(p.change_provenance), source)


def providers_markdown(profiles: list[Profile]) -> str:
    """The README's table of providers, one row per profile, in Markdown."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in _table_row(p, links=True)) + " |" for p in profiles]
    return "\n".join(lines) + "\n"


def readme_section(readme: str, table: str) -> str:
    """The README with the text between the providers markers replaced by `table`."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise UserError(f"the README has no section between {README_START} and {README_END}; add both lines")
    return f"{head}{start}\n{table}{end}{tail}"


def profiles_in(directory: Path) -> list[Profile]:
    """Every profile of one directory (the checkout's policies/, for the README), sorted by id."""
    return [load_profile_file(f) for f in sorted(directory.glob("*.toml"))]
