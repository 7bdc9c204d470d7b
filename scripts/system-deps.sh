#!/usr/bin/env bash
# System packages the README's two commands need, installed only where missing (Debian):
#   python3-venv   Debian splits venv/ensurepip out of python3
#   make, g++      the build (g++ for the C++ backend; without it the torch backend stands in)
#   installation-guide-amd64   the default task corpus: Debian's installation manual in
#                              19 languages, read by specfair.corpus at run time
# Runs apt-get as root, or through sudo; otherwise prints the command and returns 0, so
# that `make` goes on and the tool that needs the package explains what is missing.
set -euo pipefail
missing=()
probe=$(mktemp -d)
python3 -m venv "$probe/venv" >/dev/null 2>&1 || missing+=(python3-venv)
rm -rf "$probe"
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
[[ -d /usr/share/doc/installation-guide-amd64/en ]] || missing+=(installation-guide-amd64)
(( ${#missing[@]} )) || exit 0
# Minimised images tell dpkg to skip /usr/share/doc (path-exclude); the corpus lives there,
# so it is included explicitly (dpkg applies command-line filters after its config files).
cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
'-oDPkg::Options::=--path-include=/usr/share/doc/installation-guide-amd64/*' ${missing[*]}"
if ! command -v apt-get >/dev/null; then
    echo "warning: not a Debian system; install the equivalent of: ${missing[*]}" >&2
    exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
    echo "system-deps: apt-get install ${missing[*]}"
    bash -c "$cmd"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    echo "system-deps: sudo apt-get install ${missing[*]}"
    sudo bash -c "$cmd"
else
    echo "warning: missing system packages (${missing[*]}); as root run:  $cmd" >&2
fi
