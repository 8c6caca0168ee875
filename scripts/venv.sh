# Sourced by setup.sh, test.sh and main.sh: which environment and TransformerLens to use.
# MEMLENS_TL=3 (default): TransformerLens 3.9 in .venv; MEMLENS_TL=4: 4.x in .venv-tl4.
# MEMLENS_VENV overrides the folder. Sets $venv and $tl (the pip requirement).
case "${MEMLENS_TL:-3}" in
    3) venv="${MEMLENS_VENV:-.venv}"; tl="transformer-lens>=3.9,<4" ;;
    4) venv="${MEMLENS_VENV:-.venv-tl4}"; tl="transformer-lens>=4,<5" ;;
    *) echo "MEMLENS_TL=${MEMLENS_TL} is invalid: use 3 (TransformerLens 3.9) or 4 (4.x)" >&2; exit 2 ;;
esac
