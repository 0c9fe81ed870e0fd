"""Shell completion that works through the colons of ``config:unset``.

bash splits the line at ``:`` (it is in ``COMP_WORDBREAKS``), so click's own bash script hands
click the words ``config``, ``:``, ``u`` and nothing completes. This script splits the line
itself, at blanks only, up to the cursor; click completes the whole word, and the part up to
the word's last ``:`` or ``=``, which readline does not replace, is taken off each answer (what
bash-completion's ``__ltrim_colon_completions`` does). zsh does not split at colons; click's
zsh script escapes them for ``_describe``.
"""

from __future__ import annotations

from click.shell_completion import BashComplete, add_completion_class

_SOURCE_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local line="${COMP_LINE:0:COMP_POINT}"
    local -a words
    IFS=$' \\t' read -r -a words <<< "$line"
    local cword=$(( ${#words[@]} - 1 ))
    [[ -z "$line" || "$line" == *[[:blank:]] ]] && cword=${#words[@]}
    local cur="${words[cword]}"
    # Readline replaces only the text after the word's last ':' or '=' (COMP_WORDBREAKS), so
    # that part of each answer is dropped (as bash-completion's __ltrim_colon_completions).
    local prefix="${cur%%"${cur##*[:=]}"}"
    local response
    response=$(env COMP_WORDS="${words[*]}" COMP_CWORD=$cword %(complete_var)s=bash_complete $1)
    for completion in $response; do
        IFS=',' read type value <<< "$completion"
        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("${value#"$prefix"}")
        fi
    done
    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


class ColonBashComplete(BashComplete):
    """click's bash completion, with a script that keeps ``config:unset`` one word."""

    source_template = _SOURCE_BASH


def install() -> None:
    """Use :class:`ColonBashComplete` for ``bash`` (both the script and the answers)."""
    add_completion_class(ColonBashComplete, "bash")
