# shellcheck shell=bash
# Shared set-up for scripts/test and scripts/demo; sourced, not run.
# After `setup_venv EXTRAS`, the project is installed in .venv at the repository root
# and the current directory is that root.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

section() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

python_is_recent_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# $PYTHON if set, else the first python3.x on PATH that is 3.11 or newer.
find_python() {
    local candidate
    for candidate in ${PYTHON:-python3 python3.13 python3.12 python3.11}; do
        if command -v "$candidate" >/dev/null && python_is_recent_enough "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# Usage: setup_venv '.[test]'   (what to pip-install, relative to the repository root)
setup_venv() {
    local target="$1" python stamp
    cd "$REPO_ROOT" || die "cannot enter $REPO_ROOT"
    if [[ ! -x "$VENV/bin/python" ]]; then
        python="$(find_python)" || die "Python 3.11 or newer is needed and none was found \
(python3 is $(python3 --version 2>&1 || echo 'missing')). Install it (Debian/Ubuntu: \
apt-get install python3 python3-venv) or set PYTHON=/path/to/python3.11"
        section "creating .venv with $("$python" --version)"
        "$python" -m venv "$VENV" || die "could not create .venv: on Debian/Ubuntu install \
python3-venv, then delete the half-made .venv and try again"
    fi
    python_is_recent_enough "$VENV/bin/python" || die ".venv has $("$VENV/bin/python" \
--version 2>&1), but 3.11 or newer is needed: delete .venv and run this again"

    # The install is editable, so only a change to pyproject.toml needs a new pip run.
    stamp="$VENV/.installed-$(printf '%s' "$target" | tr -c '[:alnum:]' '_')"
    if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
        section "installing $target into .venv"
        "$VENV/bin/python" -m pip install -q -e "$target"
        touch "$stamp"
    fi
}
