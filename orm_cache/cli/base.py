"""The command group: user errors as one line, --config FILE, and ``orm-cache help TOPIC``.

The commands live in :mod:`.stage1`, :mod:`.stage2` and :mod:`.apply`; each
parses options, builds a config and calls one library function in :mod:`orm_cache.pipeline`.
"""

from __future__ import annotations

import signal
import warnings

import click

from .configfile import config_defaults, load_config
from .options import SPECS, TOPIC, Command, Terminated, _show_warning, field_docs


class Group(click.Group):
    """Turns the library's user-facing errors into one clear line and a non-zero exit; its help
    lists the commands once, in the docstring's table (by stage), not again alphabetically."""

    def format_commands(self, ctx, formatter):
        if self.name != "cli":  # a subgroup (cache) lists its commands as usual
            super().format_commands(ctx, formatter)

    def invoke(self, ctx):
        from ..errors import UserError

        try:
            return super().invoke(ctx)
        except Terminated:
            kept = " (embed keeps the shards it wrote)" if ctx.invoked_subcommand == "embed" else ""
            click.echo(f"terminated (SIGTERM): no output file was replaced by a partial one{kept}; run the same "
                       "command again to finish", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except UserError as e:  # anything else is a bug: its traceback is the report
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a missing file, a read-only or full disk: what and where, in one line
            where = f": {e.filename}" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
            raise click.ClickException(f"{e.strerror or e}{where}" if e.strerror else str(e)) from None




@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                     "terminal_width": 100})
@click.version_option(package_name="orm-cache")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), envvar="ORM_CACHE_CONFIG",
              help="TOML (or YAML) file of option defaults: top-level keys for every command, [command] "
                   "tables for one (env: ORM_CACHE_CONFIG).")
@click.pass_context
def cli(ctx, config_path):
    """Pairwise outcome reward models over a frozen language model, with a vector cache.

    \b
    Stage 1  embed        run the frozen encoder once per distinct trace -> Arrow shards in cache/
    Stage 2  fit-head     train a head from cached vectors (seconds, no model loaded)
             sweep        train a grid of heads at once, select on validation
             eval         the reference model card's metric table (test split by default)
             verify       prove cached scores equal live end-to-end scores
             score, rank  offline re-scoring; best-of-N per group, by score or vote (cache hits load no model)
             likelihood   the card's data check: the frozen LM's log-likelihood against the labels
    Serve    serve        rewards over HTTP for RL and search: cache first, misses batched
    HF       export       the encoder + head as a Hugging Face AutoModelForSequenceClassification
             import-head  an existing reward model's score layer as a head
    Tools    demo         the whole pipeline offline on a CPU
             make-data    the synthetic reasoning-trace data set
             cache        columns per store (info), verify every byte (check), merge shards (compact)
             help         every option of a topic: data, encoder, run, head, config
    """
    warnings.showwarning = _show_warning
    if config_path:
        ctx.default_map = config_defaults(ctx.command, load_config(config_path), config_path)


Group.command_class = Command


HELP_TOPICS = {
    "data": "where traces come from and how rows become texts and pairs",
    "encoder": "what decides a vector: model, dtype, max length, poolings and layers",
    "run": "how stage 1 runs: device, batches, chunks, shards (none of it changes a vector)",
    "head": "how a head trains (fit-head and sweep; any of these is a --grid field)",
    "config": "the --config file",
}


@cli.command("help", short_help="Every option of a topic: data, encoder, run, head, config.")
@click.argument("topic", required=False, type=click.Choice(list(HELP_TOPICS)))
def help_cmd(topic):
    """Every option of TOPIC, with its default and environment variable (no TOPIC: the topics)."""
    if topic is None:
        for name, what in HELP_TOPICS.items():
            click.echo(f"  orm-cache help {name:<8} {what}")
        return
    if topic == "config":
        click.echo(CONFIG_HELP)
        return
    spec = SPECS[topic]
    defaults = spec()
    flags = {"recipe_kind": "recipe", "step_prefixes": "steps"}  # a field whose option reads better under another name
    for name, doc in field_docs(spec).items():
        if name in ("chat_tokens", "require_prompt", "keep_columns"):
            continue  # set by the library from a head, not options
        default = getattr(defaults, name, None)
        folded = "" if name in TOPIC else "  (also listed in each command's --help)"
        flag = flags.get(name, name)
        env = name if name == "step_prefixes" else flag  # ORM_CACHE_STEPS is fit-head's AdamW steps
        click.echo(f"--{flag.replace('_', '-')}  [default: {default!r}; env ORM_CACHE_{env.upper()}]{folded}")
        click.echo(click.wrap_text(doc, 96, initial_indent="    ", subsequent_indent="    "))


CONFIG_HELP = """--config FILE (before the command, after it, or ORM_CACHE_CONFIG=FILE) sets option defaults, so a project
states its data and encoder once. TOML (YAML with PyYAML): top-level keys apply to every command
that has the option; a [command] table (e.g. [fit-head], [cache.compact]) to that command only.
Options given on the command line win, then environment variables, then the file.

    # orm-cache.toml
    data = "data/"
    model = "bundled-minilm"
    pooling = "last,mean"
    layers = "-1,-4"
    cache-dir = "cache"

    [fit-head]
    solver = "lbfgs"
    feature = "mean@-4"
"""
