"""The examples each ``--help`` page ends with: two or three lines a user can copy.

Kept in one table (not in each command's docstring) so a test can check that every command has
them, and that each names its own command.
"""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "hgrun": ("hgrun run bash", "hgrun logs -t", "hgrun help run"),
    "server": ("hgrun server", "hgrun server --data-dir /srv/hgrun --max-timeout 4h"),
    "login": ("hgrun login --url http://127.0.0.1:8765 --token hgr_...", "hgrun login"),
    "logout": ("hgrun logout", "hgrun logout --json"),
    "completion": (
        'eval "$(hgrun completion bash)"   # in ~/.bashrc',
        'eval "$(hgrun completion zsh)"    # in ~/.zshrc',
    ),
    "help": ("hgrun help run", "hgrun help config:set"),
    "apps": ("hgrun apps", "hgrun apps --json"),
    "apps:create": ("hgrun apps:create myapp", "hgrun apps:create myapp --json"),
    "apps:destroy": ("hgrun apps:destroy myapp", "hgrun apps:destroy myapp --yes   # in a script"),
    "deploy": ("hgrun deploy", "hgrun deploy --path ./services/api"),
    "releases": ("hgrun releases", "hgrun releases -a myapp --json"),
    "releases:rollback": (
        "hgrun releases:rollback        # back to the release before the live one",
        "hgrun releases:rollback v3",
    ),
    "config": ("hgrun config", "hgrun config --shell > .env"),
    "config:set": ("hgrun config:set DEBUG=1", "hgrun config:set -a myapp API_URL=https://x.test"),
    "config:unset": ("hgrun config:unset DEBUG", "hgrun config:unset A B --json"),
    "run": (
        "hgrun run bash",
        "hgrun run 'ls -l /app | wc -l'       # one argument: a command line for sh -c",
        "hgrun run -d -e DEBUG=1 python3 manage.py migrate -a myapp",
    ),
    "attach": ("hgrun attach 42", "hgrun attach run.42 --no-tty"),
    "ps": ("hgrun ps", "hgrun ps -a myapp --json"),
    "runs": ("hgrun runs", "hgrun runs --status failed -n 10"),
    "runs:info": ("hgrun runs:info 42", "hgrun runs:info run.42 --json"),
    "stop": ("hgrun stop 42", "hgrun stop run.42 --json"),
    "logs": ("hgrun logs", "hgrun logs -t", "hgrun logs -n 20 --run 42"),
    "scripts": ("hgrun scripts", "hgrun scripts --json"),
    "scripts:run": (
        "hgrun scripts:run nightly-report",
        "hgrun scripts:run import --input '{\"id\": 42}' -d --wait",
    ),
    "tokens": ("hgrun tokens", "hgrun tokens --json"),
    "tokens:create": (
        "hgrun tokens:create ci --scope deploy",
        "hgrun tokens:create hook --scope trigger --script import",
    ),
    "tokens:revoke": ("hgrun tokens:revoke ci", "hgrun tokens:revoke ci --json"),
    "audit": ("hgrun audit", "hgrun audit --run 42"),
    "nodes": ("hgrun nodes", "hgrun nodes --json"),
    "nodes:add": (
        "hgrun nodes:add n2 tcp://10.0.0.12:2376",
        "hgrun nodes:add n2 tcp://10.0.0.12:2376 --json",
    ),
    "nodes:remove": ("hgrun nodes:remove n2", "hgrun nodes:remove n2 --json"),
}


def epilog(name: str) -> str:
    """The ``Examples:`` block for command ``name`` (``\\b`` keeps click from rewrapping it)."""
    lines = "\n".join(f"  $ {line}" for line in EXAMPLES[name])
    return f"Examples:\n\n\b\n{lines}"
