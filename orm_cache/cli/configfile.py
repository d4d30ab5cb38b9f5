"""``--config FILE``: option defaults from a TOML (or YAML) file, as click's ``default_map``.

Given before the command (``orm-cache --config F fit-head``) it sets every command's defaults;
given after it (``orm-cache fit-head --config F``) that command's. Top-level keys apply to every
command that has the option; a ``[command]`` table (``[cache.compact]`` for a subcommand) to one.
"""

from __future__ import annotations

import click


def load_config(path: str) -> dict:
    """A --config file as a mapping: TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML).
    Top-level keys are options of any command (``model = "bundled-minilm"``, ``cache-dir``);
    a table named after a command (``[fit-head]``, ``[cache.compact]``) holds that command's."""
    from ..errors import ConfigError

    try:
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"--config {path}: a YAML file needs PyYAML (pip install pyyaml), or write TOML") from None
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        else:
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
    except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError and yaml's errors are ValueErrors
        raise ConfigError(f"--config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of options, got {type(data).__name__}")
    return data


def _params(cmd: click.Command) -> dict[str, str]:
    """Every spelling of a command's options (``cache-dir``, ``cache_dir``, ``--cache-dir``) -> its name."""
    out = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for o in p.opts + [p.name]:
                out[o.lstrip("-")] = out[o.lstrip("-").replace("-", "_")] = p.name
    return out


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield prefix + name, cmd


def _check_one_meaning(group: click.Group, shared: dict, path: str) -> None:
    """A top-level key is given to every command that has the option; one spelling that is a flag
    in one command and takes a value in another (embed's --steps, fit-head's AdamW --steps) would
    mean two things, so it must sit in a [command] table."""
    from ..errors import ConfigError

    for key in shared:
        kinds = {}
        for name, cmd in _commands(group):
            for p in cmd.params:
                if isinstance(p, click.Option) and key in {o.lstrip("-") for o in p.opts} | {
                        o.lstrip("-").replace("-", "_") for o in p.opts} | {p.name}:
                    kinds.setdefault(bool(p.is_flag), name)
        if len(kinds) > 1:
            raise ConfigError(f"--config {path}: {key!r} is a flag of {kinds[True]} but takes a value in {kinds[False]}; "
                              f"put it in a table, e.g. [{kinds[True]}] or [{kinds[False]}]")


def _all_params(group: click.Group) -> set[str]:
    """Every spelling of every option of every command under ``group``."""
    out = set()
    for cmd in group.commands.values():
        out |= _all_params(cmd) if isinstance(cmd, click.Group) else set(_params(cmd))
    return out


def config_defaults(group: click.Group, data: dict, path: str, where: str = "") -> dict:
    """click's ``default_map`` from a --config mapping; a key no command knows is refused, naming it."""
    from ..errors import ConfigError

    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if not where:
        unknown = [k for k in tables if k not in group.commands] + [k for k in shared if k not in _all_params(group)]
        if unknown:
            raise ConfigError(f"--config {path}: {', '.join(map(repr, unknown))} is no option or command of orm-cache")
    if not where:
        _check_one_meaning(group, shared, path)
    out = {}
    for name, cmd in group.commands.items():
        table = tables.get(name, {})
        if isinstance(cmd, click.Group):
            out[name] = config_defaults(cmd, {**shared, **table}, path, f"{where}{name}.")
            continue
        params = _params(cmd)
        d = {params[k]: v for k, v in shared.items() if k in params}
        for k, v in table.items():
            if k not in params:
                raise ConfigError(f"--config {path}: [{where}{name}] has no option {k!r}")
            d[params[k]] = v
        out[name] = d
    return out
